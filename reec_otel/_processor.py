"""LogJobSpanProcessor: turns job spans into LogJob rows.

Any span carrying ``reec.job.name`` is a job, whoever started it. Rows are
made from the span alone and handed to the writer; the processor never waits
and never touches the database. What fails in here is logged and counted, and
never reaches the job.

Rows per run, full mode: Enqueued and Processing when the job span starts
(Processing later, at the start of a processing child span, when the run is
deferred), then Succeeded or Failed when it ends. Light mode: only Failed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode
from sqlalchemy.engine import URL

from reec_otel import _attributes as attrs
from reec_otel import _text
from reec_otel._attributes import StateJob
from reec_otel._diagnostics import RateLimitedLog
from reec_otel._schema import log_job_table, pending_row, row_of_pending
from reec_otel._settings import (
    LogJobOptions,
    application_name_of_service,
    validate_application_name,
)
from reec_otel._writer import BatchWriter, Row, create_database_engine

__all__ = ["LogJobSpanProcessor"]

logger = logging.getLogger(__name__)

_GROUP_TYPE = "builtins.ExceptionGroup"
_MAX_OPEN_JOBS = 100_000
# The states as plain text, as span attributes carry them.
_ENQUEUED = StateJob.ENQUEUED.value
_PROCESSING = StateJob.PROCESSING.value
_SUCCEEDED = StateJob.SUCCEEDED.value
_FAILED = StateJob.FAILED.value
_NO_ATTRIBUTES: Mapping[str, Any] = {}


class RowSink(Protocol):
    """Where the processor hands rows: the background writer, or a test double."""

    def submit(self, row: Row) -> bool: ...

    def force_flush(self, timeout_millis: int = 30_000) -> bool: ...

    def shutdown(self, timeout_millis: int = 30_000) -> bool: ...


class LogJobSpanProcessor(SpanProcessor):
    """A span processor writing LogJob rows for job spans.

    Used on its own, add it to any SDK ``TracerProvider``::

        provider.add_span_processor(
            LogJobSpanProcessor("postgresql+psycopg://app@db/app", application_name="billing")
        )

    Args:
        database_url: where rows go (ignored when *writer* is given).
        application_name: stored on every row; by default the span's
            ``service.name`` resource attribute.
        log_job: table name and schema; ``is_save_db=False`` writes no rows.
        writer: a ready row sink, instead of a writer made for *database_url*.
    """

    def __init__(
        self,
        database_url: str | URL | None = None,
        *,
        application_name: str | None = None,
        log_job: LogJobOptions | None = None,
        writer: RowSink | None = None,
    ) -> None:
        options = log_job or LogJobOptions()
        if writer is None:
            if database_url is None:
                raise TypeError("LogJobSpanProcessor needs a database_url or a writer.")
            table = log_job_table(options.table_name, options.schema)
            writer = BatchWriter(create_database_engine(database_url), table)
        self.writer = writer
        if application_name is not None:
            validate_application_name(application_name, "application_name")
        self.application_name = application_name
        self.is_save_db = options.is_save_db
        self._shut_down = False
        self._open: dict[int, _Job] = {}  # job spans started and not yet ended
        self._errors = 0
        self._warnings = RateLimitedLog(logger)

    @property
    def writer(self) -> RowSink:
        """Where rows go: the background writer, or the sink given instead."""
        return self._writer

    @writer.setter
    def writer(self, writer: RowSink) -> None:
        self._writer = writer
        # The background writer takes the processor's rows as they are made
        # (see pending_row); any other sink, and a writer whose submit() was
        # replaced (by a subclass, a test double or a spy), gets each row as a
        # LogJobRow.
        submit = getattr(writer, "submit", None)
        if getattr(submit, "__func__", None) is BatchWriter.submit:
            self._submit: Callable[..., object] = writer.submit_pending  # type: ignore[attr-defined]
        else:
            self._submit = self._submit_to_sink

    @property
    def errors(self) -> int:
        """How many spans could not be turned into rows because of an internal error."""
        return self._errors

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        # The work is done right here rather than in a helper: this runs for
        # every span on the job's thread, and a call is a measurable share.
        try:
            if self._shut_down or not self.is_save_db:
                return
            attributes = span.attributes
            if attributes is None:
                return
            # Subscripts, not get(): see _value().
            try:
                name = attributes[attrs.NAME]
            except KeyError:
                return  # not a job span
            light = None
            if len(attributes) == 2:
                try:  # noqa: SIM105 - a plain try costs nothing, suppress() a call
                    light = attributes[attrs.LIGHT]
                except KeyError:
                    pass
            if light is True:
                # A light run that starts at once, without a user: the name and
                # the flag are all it carries. A row only if it fails, and the
                # name is cleaned then.
                self._remember(span.context.span_id, _new_job(_Job, (name, True, None)))
                return
            if light is not None:
                # The same for a run of full mode: no other key needs looking for.
                job = _new_job(_Job, (_text.safe_str(name, _text.MAX_NAME_CHARS), False, None))
                phase = deferred = None
            else:
                keys = tuple(attributes)
                job = _Job.of(name, attributes, keys)
                phase = _value(attributes, keys, attrs.PHASE)
                deferred = _value(attributes, keys, attrs.DEFERRED)
            span_context = span.get_span_context()
            if phase == attrs.PHASE_PROCESSING:
                parent = span.parent
                if parent is not None and not job.light:
                    self._submit(
                        self._pending(span, job, _PROCESSING, span.start_time, parent.span_id)
                    )
                return
            span_id = span_context.span_id
            self._remember(span_id, job)
            if job.light:
                return
            application_name = self._application_name(span)
            trace_id = span_context.trace_id
            time_ns = span.start_time
            if time_ns is None:
                time_ns = time.time_ns()
            enqueued = pending_row(
                application_name, job.name, _ENQUEUED, trace_id, span_id, job.create_user, time_ns
            )
            if deferred is True:
                self._submit(enqueued)
                return
            # The same instant of the same run: only the state differs.
            processing = pending_row(
                application_name, job.name, _PROCESSING, trace_id, span_id, job.create_user, time_ns
            )
            self._submit(enqueued, processing)
        except Exception:
            self._internal_error("start")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_id = span.context.span_id
            # The job's identity as it was at start: the span's attributes may
            # since have been evicted by the SDK's attribute limit.
            job = self._open.pop(span_id, None)
            attributes = span.attributes
            if attributes is None:
                attributes = _NO_ATTRIBUTES
            if job is not None and job.light:
                # The common light run succeeds: its state is all there is to read.
                try:
                    if attributes[attrs.STATE] == _SUCCEEDED:
                        return
                except KeyError:
                    pass
            keys = tuple(attributes)  # see _value()
            if job is None:
                if self._shut_down or attrs.NAME not in keys or attrs.PHASE in keys:
                    return
                job = _Job.of(attributes[attrs.NAME], attributes, keys)
            # A run that started before shutdown still hands its final row over,
            # so that the writer counts it as dropped rather than lose it silently.
            if not self.is_save_db:
                return
            state = _final_state(span, _value(attributes, keys, attrs.STATE))
            if job.light:
                if state is _SUCCEEDED:
                    return
                job = job.cleaned()
            message = _value(attributes, keys, attrs.MESSAGE)
            data = _value(attributes, keys, attrs.DATA)
            row = self._pending(
                span,
                job,
                state,
                span.end_time,
                span_id,
                _duration_ms(span, _value(attributes, keys, attrs.DURATION_MS)),
                _optional_text(message, _text.MAX_MESSAGE_CHARS),
                data if isinstance(data, str) else None,
                *(_failure_fields(span.events) if state is _FAILED else ()),
            )
            self._submit(row)
        except Exception:
            self._internal_error("end")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.writer.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.shutdown_within(30_000)

    def shutdown_within(self, timeout_millis: int) -> bool:
        """Stop taking spans and write what is queued; True if done in time."""
        if self._shut_down:
            return True
        self._shut_down = True
        return self.writer.shutdown(timeout_millis)

    # -- spans to rows -------------------------------------------------------

    def _remember(self, span_id: int, job: _Job) -> None:
        open_jobs = self._open
        open_jobs[span_id] = job
        if len(open_jobs) > _MAX_OPEN_JOBS:
            # Spans that never end must not grow memory without bound.
            open_jobs.pop(next(iter(open_jobs)), None)

    def _pending(
        self,
        span: ReadableSpan,
        job: _Job,
        state: str,
        time_ns: int | None,
        span_id: int,
        *final: Any,
    ) -> tuple[Any, ...]:
        """A pending row (see pending_row) for one state of *span*'s job."""
        return pending_row(
            self._application_name(span),
            job.name,
            state,
            span.get_span_context().trace_id,  # type: ignore[union-attr]
            span_id,
            job.create_user,
            time.time_ns() if time_ns is None else time_ns,
            *final,
        )

    def _submit_to_sink(self, *rows: tuple[Any, ...]) -> None:
        for row in rows:
            self._writer.submit(row_of_pending(row))

    def _application_name(self, span: ReadableSpan) -> str:
        if self.application_name is not None:
            return self.application_name
        return application_name_of_service(span.resource.attributes.get("service.name"))

    def _internal_error(self, where: str) -> None:
        self._errors += 1
        self._warnings.log(
            logging.WARNING,
            where,
            "LogJobSpanProcessor failed to turn a span into rows at span %s (%d errors so far).",
            where,
            self._errors,
            exc_info=True,
        )


class _Job(NamedTuple):
    """What a job span says of its job when it starts."""

    # A named tuple, not a frozen dataclass: one is made for every job span,
    # and a tuple is built several times faster. A light job's name is kept
    # as the span gave it until a row needs it (see cleaned()).
    name: Any
    light: bool
    create_user: str | None

    def cleaned(self) -> _Job:
        """The same job with its name made storable (cleaning twice changes nothing)."""
        return self._replace(name=_text.safe_str(self.name, _text.MAX_NAME_CHARS))

    @classmethod
    def of(cls, name: object, attributes: Mapping[str, Any], keys: tuple[str, ...]) -> _Job:
        return cls(
            _text.safe_str(name, _text.MAX_NAME_CHARS),
            # Only a real boolean True: the text "false" from other code is not.
            _value(attributes, keys, attrs.LIGHT) is True,
            _optional_text(_value(attributes, keys, attrs.CREATE_USER), _text.MAX_NAME_CHARS),
        )


# A job made from its three values without the named tuple's __new__, which
# is Python code the interpreter enters from C (see _value()).
_new_job = tuple.__new__


def _value(attributes: Mapping[str, Any], keys: tuple[str, ...], key: str) -> Any:
    """The value of *key*, or None; *keys* are those of *attributes*, read once.

    The SDK hands a span's attributes as a read-only proxy of a mapping
    written in Python: each lookup through it enters the interpreter anew
    from C, ``get()`` twice, and a missing key raises and catches a KeyError
    on the way, which costs three lookups of a present one. Where several
    keys may be missing, their tuple, read once, answers every membership
    question, and a value is looked up only when it is there.
    """
    return attributes[key] if key in keys else None


def _final_state(span: ReadableSpan, state: object) -> str:
    """Succeeded or Failed, as the interned constants above (compare with ``is``);
    *state* is the span's state attribute, if any."""
    # A job span started by other code may carry no state: its status decides.
    if state == _FAILED:
        return _FAILED
    if state == _SUCCEEDED:
        return _SUCCEEDED
    return _FAILED if span.status.status_code is StatusCode.ERROR else _SUCCEEDED


def _duration_ms(span: ReadableSpan, duration: object) -> float | None:
    """*duration* (the span's attribute) in milliseconds, else the span's own."""
    if isinstance(duration, int | float) and math.isfinite(duration):
        return float(duration)
    if span.start_time is None or span.end_time is None:
        return None
    return (span.end_time - span.start_time) / 1e6


def _failure_fields(events: Sequence[Event]) -> tuple[str | None, ...]:
    """The exception columns of a Failed row, from the span's exception events:
    ``exception_type``, ``exception``, ``inner_exception`` and ``stack_trace``.

    One event is the job's exception. A second one, from the exception handler,
    makes the row describe both together as an exception group.
    """
    exceptions = [e.attributes or {} for e in events if e.name == attrs.EXCEPTION_EVENT]
    # The Worker marks the events of the job's failure; an exception the job
    # recorded on its own span is not its failure. Spans of other code carry
    # no mark: all their exception events count.
    marked = [e for e in exceptions if attrs.EXCEPTION_SOURCE in e]
    if marked:
        exceptions = marked
    if not exceptions:
        return (None, None, None, None)
    first = exceptions[0]
    if len(exceptions) == 1:
        return (
            _optional_text(first.get(attrs.EXCEPTION_TYPE), _text.MAX_NAME_CHARS),
            _optional_text(first.get(attrs.EXCEPTION_MESSAGE), _text.MAX_EXCEPTION_CHARS),
            _optional_text(first.get(attrs.EXCEPTION_INNER), _text.MAX_EXCEPTION_CHARS),
            _optional_text(first.get(attrs.EXCEPTION_STACKTRACE), _text.MAX_STACK_TRACE_CHARS),
        )
    parts = [_describe_event(e) for e in exceptions]
    traces = [str(e.get(attrs.EXCEPTION_STACKTRACE, "")) for e in exceptions]
    exception = _text.clean(
        f"run_function_exception failed while handling the job's exception "
        f"({len(exceptions)} sub-exceptions): " + "; ".join(parts),
        _text.MAX_EXCEPTION_CHARS,
    )
    stack_trace = _text.clean(
        f"{_GROUP_TYPE}: the job's exception, then the handler's\n"
        + "\n".join(
            f"+---------------- {index} ----------------\n{trace}"
            for index, trace in enumerate(traces, start=1)
        ),
        _text.MAX_STACK_TRACE_CHARS,
    )
    # The job's own exception is what the handler's failure happened behind.
    inner = _optional_text(first.get(attrs.EXCEPTION_MESSAGE), _text.MAX_EXCEPTION_CHARS)
    return (_GROUP_TYPE, exception, inner, stack_trace)


def _describe_event(event: Mapping[str, Any]) -> str:
    return f"{event.get(attrs.EXCEPTION_TYPE, '?')}: {event.get(attrs.EXCEPTION_MESSAGE, '')}"


def _optional_text(value: Any, limit: int) -> str | None:
    return None if value is None else _text.safe_str(value, limit)
