"""The Worker: runs one job inside one OpenTelemetry span.

The worker knows OpenTelemetry and the attribute vocabulary, never the
database. Every fact a LogJob row needs is put on the job span; a span
processor turns those spans into rows.

A run that starts at once is one span. A run with a delay starts its job span
at submission and a child span, marked as the processing phase, when the work
begins, so that Enqueued and Processing carry their own instants.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import inspect
import random
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from types import MethodType
from typing import Any, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from reec_otel import _attributes as attrs
from reec_otel import _sanitize, _text
from reec_otel._attributes import StateJob
from reec_otel._signals import termination
from reec_otel._tracing import job_tracer, mark_continued

__all__ = ["IWorker", "JobContext", "JobResult", "Worker", "job"]

RunFunction = Callable[["JobContext"], Any]
ExceptionFunction = Callable[["JobContext", Exception], Any]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_NAME_JOB = "Anonymous"
_HANDLER_FAILED = "run_function_exception failed while handling the job's exception"
# Results that are never awaitable, so resolving them needs no further check.
_PLAIN_RESULTS = frozenset({type(None), str, int, float, bool, bytes, dict, list, tuple})


@dataclasses.dataclass
class JobContext:
    """What a run function receives: who it is, its span, and a dict to fill.

    ``data`` is stored as JSON on the run's final row; keep secrets out of it or
    sanitise them first.
    """

    name_job: str
    trace_identifier: str
    span_id: str
    span: trace.Span
    create_user: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class JobResult:
    """The outcome of one run, as returned by ``execute()`` and ``execute_async()``.

    ``exception`` is the job's exception, or an ``ExceptionGroup`` of it and the
    handler's when ``run_function_exception`` failed too. ``duration_ms``
    excludes the delay.
    """

    state: StateJob
    trace_identifier: str
    span_id: str
    message: str | None = None
    exception: BaseException | None = None
    duration_ms: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.state is StateJob.SUCCEEDED


@runtime_checkable
class IWorker(Protocol):
    """The execution contract every worker keeps."""

    name_job: str
    is_light_execution: bool
    run_function: RunFunction | None
    run_function_exception: ExceptionFunction | None

    def execute(self) -> JobResult: ...

    async def execute_async(self) -> JobResult: ...


class Worker:
    """Runs a job safely and traceably.

    ``run_function(ctx)`` is the job; its result, as text, is the row's message.
    ``run_function_exception(ctx, exc)`` is called when the job raises an
    ``Exception``; its return value is ignored. Both may be plain or ``async``
    functions, given here, assigned later, or defined as methods by a subclass.

    Args:
        name_job: the job's name, on its span and rows.
        is_light_execution: store only failures.
        create_user: who started the job, stored on every row.
        delay: wait before processing (a ``timedelta`` or seconds); the
            duration excludes it.
        trace_identifier: continue this trace (32 hex digits or a UUID)
            instead of the current one.
    """

    run_function: RunFunction | None = None
    run_function_exception: ExceptionFunction | None = None
    # The functions last checked by _functions(), and whether either is async.
    _checked: tuple[weakref.ref[Any], weakref.ref[Any] | None, bool] | None = None

    def __init__(
        self,
        name_job: str = DEFAULT_NAME_JOB,
        *,
        is_light_execution: bool = False,
        create_user: str | None = None,
        delay: dt.timedelta | float | None = None,
        trace_identifier: str | uuid.UUID | None = None,
        run_function: RunFunction | None = None,
        run_function_exception: ExceptionFunction | None = None,
    ) -> None:
        if not isinstance(name_job, str) or not name_job:
            raise ValueError(f"name_job must be a non-empty string; got {name_job!r}.")
        self.name_job = name_job
        self.is_light_execution = bool(is_light_execution)
        self.create_user = create_user
        self.delay_seconds = _delay_seconds(delay)
        self.trace_identifier = trace_identifier
        # A worker made inside a request belongs to that request even when it
        # runs later on a thread without one.
        self._origin = _context_with_span()
        if run_function is not None:
            self.run_function = run_function
        if run_function_exception is not None:
            self.run_function_exception = run_function_exception

    @property
    def trace_identifier(self) -> str | None:
        """The trace this worker continues, as 32 lowercase hex digits, or None."""
        return None if self._trace_id is None else f"{self._trace_id:032x}"

    @trace_identifier.setter
    def trace_identifier(self, value: str | uuid.UUID | None) -> None:
        self._trace_id = None if value is None else parse_trace_identifier(value)

    def __repr__(self) -> str:
        return f"Worker(name_job={self.name_job!r}, is_light_execution={self.is_light_execution})"

    def execute(self) -> JobResult:
        """Run the job now, on this thread.

        Never raises for an ``Exception`` of the job: it is recorded and returned.
        ``KeyboardInterrupt``, ``SystemExit`` and other base exceptions are
        recorded as Failed and re-raised. An ``async`` run function needs no
        running event loop here; inside one, use :meth:`execute_async`.
        """
        run, handler, runs_async = self._functions()
        if runs_async:
            _refuse_inside_running_loop(self.name_job)
        return self._execute_begun(self._begin(deferred=False), run, handler)

    def submit(self, executor: concurrent.futures.Executor) -> concurrent.futures.Future[JobResult]:
        """Hand the job to *executor* (a thread pool); return the future of its result.

        The run is Enqueued now, on this thread, and Processing when the
        executor starts it, so a job waiting in a busy pool shows as such.
        """
        run, handler, _ = self._functions()
        run_ = self._begin(deferred=True)
        try:
            return executor.submit(self._execute_begun, run_, run, handler)
        except BaseException as exc:
            run_.activate()
            run_.abort(exc)
            run_.close()
            raise

    def _execute_begun(
        self, run_: _Run, run: RunFunction, handler: ExceptionFunction | None
    ) -> JobResult:
        run_.activate()
        try:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            run_.start_processing()
            try:
                value = run(run_.ctx)
                if type(value) not in _PLAIN_RESULTS:
                    value = _resolve_sync(value)
            except Exception as exc:
                handler_exc = None
                if handler is not None:
                    try:
                        _resolve_sync(handler(run_.ctx, exc))
                    except Exception as second:
                        handler_exc = second
                return run_.fail(exc, handler_exc)
            return run_.succeed(value)
        except BaseException as exc:
            run_.abort(exc)
            raise
        finally:
            run_.close()

    async def execute_async(self) -> JobResult:
        """Run the job in the running event loop; plain functions run inline."""
        run, handler, _ = self._functions()
        run_ = self._begin(deferred=False)
        run_.activate()
        try:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            run_.start_processing()
            try:
                value = await _resolve_async(run(run_.ctx))
            except Exception as exc:
                handler_exc = None
                if handler is not None:
                    try:
                        await _resolve_async(handler(run_.ctx, exc))
                    except Exception as second:
                        handler_exc = second
                return run_.fail(exc, handler_exc)
            return run_.succeed(value)
        except BaseException as exc:
            run_.abort(exc)
            raise
        finally:
            run_.close()

    def _functions(self) -> tuple[RunFunction, ExceptionFunction | None, bool]:
        """The run function, the exception handler, and whether either is ``async``."""
        run = self.run_function
        handler = self.run_function_exception
        checked = self._checked
        # A dead reference answers None: None never matches it.
        if (
            checked is not None
            and checked[0]() is run
            and run is not None
            and (handler is None if checked[1] is None else checked[1]() is handler is not None)
        ):
            return run, handler, checked[2]
        if run is None or not callable(run):
            raise TypeError(f"Worker {self.name_job!r} has no callable run_function to execute.")
        if handler is not None and not callable(handler):
            raise TypeError(f"run_function_exception of {self.name_job!r} is not callable.")
        runs_async = _is_async(run) or _is_async(handler)
        # Kept for the next run of the same functions, by weak reference so
        # that a function the worker no longer has is not kept alive. Not
        # bound methods (one is made anew on every attribute lookup) nor
        # objects that take no weak reference: those are checked every time.
        if type(run) is not MethodType and type(handler) is not MethodType:
            try:
                weak_handler = None if handler is None else weakref.ref(handler)
                self._checked = (weakref.ref(run), weak_handler, runs_async)
            except TypeError:
                self._checked = None
        return run, handler, runs_async

    def _begin(self, *, deferred: bool) -> _Run:
        # The parent: an explicit trace first, else the span current here,
        # else the request the worker was made in.
        parent = None
        if self._trace_id is not None:
            parent = _continued_trace(self._trace_id)
        elif self._origin is not None and not _current_span_is_valid():
            parent = self._origin
        return _Run(self, parent, deferred=deferred or bool(self.delay_seconds))


class _Run:
    """The state of one run: its spans, its clock and its context token."""

    __slots__ = (
        "_processing",
        "_processing_token",
        "_started_ns",
        "_token",
        "ctx",
        "deferred",
        "light",
        "span",
    )

    def __init__(
        self, worker: Worker, parent: otel_context.Context | None, *, deferred: bool
    ) -> None:
        tracer = job_tracer()
        self.light = worker.is_light_execution
        self.deferred = deferred
        start: dict[str, AttributeValue] = {attrs.NAME: worker.name_job, attrs.LIGHT: self.light}
        if worker.create_user is not None:
            start[attrs.CREATE_USER] = _scrubbed(worker.create_user, _text.MAX_NAME_CHARS)
        if self.deferred:
            start[attrs.DEFERRED] = True
            if worker.delay_seconds:
                start[attrs.DELAY_MS] = worker.delay_seconds * 1000.0
        span = tracer.start_span(worker.name_job, context=parent, attributes=start)
        span_context = span.get_span_context()
        if not span_context.is_valid:
            # No SDK is installed: still give the run an identity of its own.
            span = NonRecordingSpan(_fresh_span_context(span_context.trace_id or None))
            span_context = span.get_span_context()
        self.span = span
        try:
            trace_identifier = span_context.trace_id.to_bytes(16, "big").hex()
            span_id = span_context.span_id.to_bytes(8, "big").hex()
        except Exception:
            # An id generator of other code made ids wider than OpenTelemetry's,
            # or not whole numbers.
            trace_identifier = _id_text(span_context.trace_id, 32)
            span_id = _id_text(span_context.span_id, 16)
        self.ctx = _filled(
            JobContext,
            name_job=worker.name_job,
            trace_identifier=trace_identifier,
            span_id=span_id,
            span=span,
            create_user=worker.create_user,
            data={},
        )
        self._processing: trace.Span | None = None
        self._processing_token: object | None = None
        self._token: object | None = None
        # Unset until processing starts: a run ended during its delay took no time.
        self._started_ns: int | None = None

    def activate(self) -> None:
        """Make the job span current on the thread that runs the job."""
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def start_processing(self) -> None:
        """Mark the end of the delay; a deferred run gets its processing span."""
        if self.deferred:
            # The processing span repeats the job's identity, so that its
            # row reads the same as the job span's rows.
            start: dict[str, AttributeValue] = {
                attrs.NAME: self.ctx.name_job,
                attrs.LIGHT: self.light,
                attrs.PHASE: attrs.PHASE_PROCESSING,
            }
            if self.ctx.create_user is not None:
                start[attrs.CREATE_USER] = _scrubbed(self.ctx.create_user, _text.MAX_NAME_CHARS)
            name = f"{self.ctx.name_job} processing"
            self._processing = job_tracer().start_span(name, attributes=start)
            self._processing_token = otel_context.attach(
                trace.set_span_in_context(self._processing)
            )
        self._started_ns = time.perf_counter_ns()

    def succeed(self, value: Any) -> JobResult:
        # A run succeeds only once its processing started.
        duration_ms = (time.perf_counter_ns() - self._started_ns) / 1e6  # type: ignore[operator]
        message = None if value is None else _scrubbed(value, _text.MAX_MESSAGE_CHARS)
        end: dict[str, Any] = {
            attrs.STATE: _SUCCEEDED,
            attrs.DURATION_MS: duration_ms,
        }
        if message is not None:
            end[attrs.MESSAGE] = message
        self._end_attributes(end)
        return self._result(StateJob.SUCCEEDED, message=message, duration_ms=duration_ms)

    def fail(self, exc: Exception, handler_exc: Exception | None) -> JobResult:
        duration_ms = self._elapsed_ms()
        self._record(exc, attrs.SOURCE_RUN, escaped=False)
        outcome: BaseException = exc
        if handler_exc is not None:
            self._record(handler_exc, attrs.SOURCE_HANDLER, escaped=False)
            outcome = ExceptionGroup(_HANDLER_FAILED, [exc, handler_exc])
        self._set_failed(exc, duration_ms)
        return self._result(StateJob.FAILED, exception=outcome, duration_ms=duration_ms)

    def abort(self, exc: BaseException) -> None:
        """Record a base exception (interrupt, exit, cancellation) before it propagates."""
        if isinstance(exc, asyncio.CancelledError):
            # A cancellation caused by SIGTERM is recorded as the termination.
            exc = termination() or exc
        self._record(exc, attrs.SOURCE_RUN, escaped=True)
        self._set_failed(exc, self._elapsed_ms())

    def close(self) -> None:
        if self._processing is not None:
            otel_context.detach(self._processing_token)  # type: ignore[arg-type]
            self._processing.end()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        self.span.end()

    def _elapsed_ms(self) -> float:
        if self._started_ns is None:
            return 0.0
        return (time.perf_counter_ns() - self._started_ns) / 1e6

    def _set_failed(self, exc: BaseException, duration_ms: float) -> None:
        self._end_attributes({attrs.STATE: _FAILED, attrs.DURATION_MS: duration_ms})
        description = f"{type(exc).__qualname__}: {_scrubbed(exc, 1024)}"
        self.span.set_status(Status(StatusCode.ERROR, description))

    def _end_attributes(self, end: dict[str, Any]) -> None:
        if self.ctx.data:
            end[attrs.DATA] = _sanitize.apply_to_json(_text.to_json(self.ctx.data))
        self.span.set_attributes(end)

    def _record(self, exc: BaseException, source: str, *, escaped: bool) -> None:
        if not self.span.is_recording():
            return
        event: dict[str, Any] = {
            attrs.EXCEPTION_TYPE: _text.qualified_name(type(exc)),
            attrs.EXCEPTION_MESSAGE: _scrubbed(exc, _text.MAX_EXCEPTION_CHARS),
            attrs.EXCEPTION_STACKTRACE: _scrubbed_traceback(exc),
            attrs.EXCEPTION_ESCAPED: str(escaped),
            attrs.EXCEPTION_SOURCE: source,
        }
        inner = _text.inner_exception(exc)
        if inner is not None:
            event[attrs.EXCEPTION_INNER] = _scrubbed(inner, _text.MAX_EXCEPTION_CHARS)
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list) and notes and source == attrs.SOURCE_RUN:
            self.ctx.data.setdefault("exception_notes", [_text.safe_str(n, 4096) for n in notes])
        self.span.add_event(attrs.EXCEPTION_EVENT, event)

    def _result(
        self,
        state: StateJob,
        *,
        message: str | None = None,
        exception: BaseException | None = None,
        duration_ms: float,
    ) -> JobResult:
        return _filled(
            JobResult,
            state=state,
            trace_identifier=self.ctx.trace_identifier,
            span_id=self.ctx.span_id,
            message=message,
            exception=exception,
            duration_ms=duration_ms,
        )


def _filled(cls: type[T], **fields: Any) -> T:
    """A dataclass instance with every field given, made in one step.

    A context and a result are made for every run; the generated ``__init__``
    (a frozen one sets each field through ``object.__setattr__``) takes twice
    as long. Every field must be given: defaults are not applied.
    """
    instance = _new_object(cls)
    instance.__dict__.update(fields)
    return instance


_new_object = object.__new__
# The states as plain text for span attributes.
_SUCCEEDED = StateJob.SUCCEEDED.value
_FAILED = StateJob.FAILED.value


def _id_text(value: object, digits: int) -> str:
    """An id as *digits* hexadecimal digits, or as text if it is no whole number."""
    try:
        return format(value, f"0{digits}x")
    except Exception:
        return _text.safe_str(value, 2 * digits)


def _scrubbed(value: object, limit: int) -> str:
    """Storable text of *value* through the installed sanitiser, cut to *limit*."""
    text = _text.clean(value, limit) if type(value) is str else _text.safe_str(value, limit)
    if _sanitize.installed() is None:
        return text
    return _text.clean(_sanitize.apply(text), limit)


def _scrubbed_traceback(exc: BaseException) -> str:
    text = _text.format_traceback(exc)
    if _sanitize.installed() is None:
        return text
    return _text.clean(_sanitize.apply(text), _text.MAX_STACK_TRACE_CHARS)


def parse_trace_identifier(value: str | uuid.UUID) -> int:
    """A trace id from 32 hex digits or a UUID (with or without dashes).

    Raises ValueError for anything else, including the all-zero id, which
    OpenTelemetry reserves for "no trace".
    """
    trace_id = 0
    if isinstance(value, uuid.UUID):
        trace_id = value.int
    elif isinstance(value, str) and (_HEX_ID.fullmatch(value) or _UUID.fullmatch(value)):
        trace_id = int(value.replace("-", ""), 16)
    if trace_id == 0:
        raise ValueError(
            "trace_identifier must be 32 hexadecimal digits or a UUID, and not all zeros; "
            f"got {value!r}."
        )
    return trace_id


_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _continued_trace(trace_id: int) -> otel_context.Context:
    # A remote parent carries the trace id; its span id stands for the caller
    # that handed the identifier over. It carries no sampling decision: the
    # job's sampler decides as for a new trace (see JobRecordingSampler).
    parent = SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=True)
    context = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
    return mark_continued(context)


def _context_with_span() -> otel_context.Context | None:
    return otel_context.get_current() if _current_span_is_valid() else None


def _current_span_is_valid() -> bool:
    return trace.get_current_span().get_span_context().is_valid


def _fresh_span_context(trace_id: int | None) -> SpanContext:
    return SpanContext(
        trace_id or random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False
    )


def _delay_seconds(delay: dt.timedelta | float | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ValueError(f"delay must be a timedelta or a number of seconds; got {delay!r}.")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"delay must be zero or more finite seconds; got {delay!r}.")
    return seconds


def _is_async(function: Callable[..., Any] | None) -> bool:
    return function is not None and inspect.iscoroutinefunction(function)


def _refuse_inside_running_loop(name_job: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"Job {name_job!r} has an async function and an event loop is running in this "
        "thread; await worker.execute_async() instead of calling execute()."
    )


def _resolve_sync(value: Any) -> Any:
    # Most jobs return plain values; the awaitable check is an ABC lookup.
    if type(value) in _PLAIN_RESULTS or not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(value))
    if inspect.iscoroutine(value):
        value.close()  # never to be awaited: say so here, not in a warning later
    raise RuntimeError(
        "The run function returned an awaitable while an event loop is running in this "
        "thread; await worker.execute_async() instead of calling execute()."
    )


async def _resolve_async(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _await(value: Awaitable[Any]) -> Any:
    return await value


@overload
def job(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def job(
    func: None = None,
    /,
    *,
    name: str | None = None,
    is_light_execution: bool = False,
    create_user: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def job(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    is_light_execution: bool = False,
    create_user: str | None = None,
) -> Any:
    """Make every call of a function one job run.

    The run is named after the function's qualified name unless *name* is given.
    The call returns the function's value; an exception is recorded, then
    re-raised to the caller as a plain call would. ``async`` functions stay
    ``async``.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        name_job = name or function.__qualname__

        def worker_for(box: _ValueBox, args: Any, kwargs: Any) -> Worker:
            return Worker(
                name_job,
                is_light_execution=is_light_execution,
                create_user=create_user,
                run_function=box.calling(function, args, kwargs),
            )

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                box = _ValueBox()
                return box.outcome(await worker_for(box, args, kwargs).execute_async())

            return run_async

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            box = _ValueBox()
            return box.outcome(worker_for(box, args, kwargs).execute())

        return run

    if func is not None:
        return decorate(func)
    return decorate


class _ValueBox:
    """Keeps a decorated function's own return value beside the run's result."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None

    def calling(self, function: Callable[..., Any], args: Any, kwargs: Any) -> RunFunction:
        if inspect.iscoroutinefunction(function):

            async def run_async(_ctx: JobContext) -> Any:
                self.value = await function(*args, **kwargs)
                return self.value

            return run_async

        def run(_ctx: JobContext) -> Any:
            self.value = function(*args, **kwargs)
            return self.value

        return run

    def outcome(self, result: JobResult) -> Any:
        if result.exception is not None:
            raise result.exception
        return self.value
