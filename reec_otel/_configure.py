"""configure(): wires a tracer provider, the LogJob processor and its writer.

This is the only module that knows every part. It attaches to the tracer
provider it is given, else to the application's global SDK provider (so the
application's own spans keep flowing to its exporters), else it creates one
whose exporters follow the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from sqlalchemy import Table
from sqlalchemy.engine import URL

from reec_otel import _tracing
from reec_otel._errors import ConfigurationError, LifecycleError
from reec_otel._processor import LogJobSpanProcessor
from reec_otel._schema import log_job_table
from reec_otel._settings import (
    ENV_APPLICATION_NAME,
    ENV_ENABLE_GLOBAL_DB_SAVE,
    LogJobOptions,
    resolve_bool,
    resolve_database_url,
)
from reec_otel._version import __version__
from reec_otel._writer import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_FLUSH_INTERVAL_SECONDS,
    DEFAULT_MAX_QUEUE_ROWS,
    BatchWriter,
    create_database_engine,
)

__all__ = ["ReecOtel", "Statistics", "configure"]

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_MILLIS = 10_000

_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_lock = threading.RLock()
_current: ReecOtel | None = None


class HandleState(enum.Enum):
    RUNNING = "running"
    SHUT_DOWN = "shut down"


@dataclasses.dataclass(frozen=True)
class Statistics:
    """What the handle's writer and processor have done so far."""

    rows_written: int = 0
    rows_queued: int = 0
    rows_dropped: int = 0
    rows_rejected: int = 0
    write_failures: int = 0
    processor_errors: int = 0
    last_error: str | None = None


class ReecOtel:
    """The handle `configure()` returns: flush and shut down what it set up."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider,
        owns_provider: bool,
        application_name: str,
        processor: LogJobSpanProcessor | None,
        database_url: URL | None,
        shutdown_timeout_millis: int,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.owns_provider = owns_provider
        self.application_name = application_name
        self.processor = processor
        self.database_url = database_url
        self.shutdown_timeout_millis = shutdown_timeout_millis
        self.state = HandleState.RUNNING
        self._shutdown_result = True
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        url = None if self.database_url is None else self.database_url.render_as_string()
        return (
            f"ReecOtel(application_name={self.application_name!r}, database_url={url!r}, "
            f"state={self.state.value!r})"
        )

    @property
    def writes_rows(self) -> bool:
        """Whether this handle writes LogJob rows (both saving switches are on)."""
        return self.processor is not None

    @property
    def table(self) -> Table | None:
        """The LogJob table rows are written to, or None when nothing is written."""
        if self.processor is None or not isinstance(self.processor.writer, BatchWriter):
            return None
        return self.processor.writer.table

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write every queued row and export every finished span; True if in time."""
        if self.state is HandleState.SHUT_DOWN:
            raise LifecycleError("force_flush() called on a reec_otel handle after shutdown().")
        deadline = time.monotonic() + timeout_millis / 1000
        done = True
        if self.processor is not None:
            done = self.processor.force_flush(timeout_millis)
        remaining = _millis_until(deadline)
        return self.tracer_provider.force_flush(remaining) and done

    def shutdown(self, timeout_millis: int | None = None) -> bool:
        """Flush and stop, all within one deadline. Idempotent.

        Shuts the tracer provider down only if `configure()` created it. Returns
        True when everything was written and exported in time.
        """
        timeout = self.shutdown_timeout_millis if timeout_millis is None else timeout_millis
        with self._lock:
            if self.state is HandleState.SHUT_DOWN:
                return self._shutdown_result
            self.state = HandleState.SHUT_DOWN
        deadline = time.monotonic() + timeout / 1000
        _uninstall(self)
        done = True
        if self.processor is not None:
            done = self.processor.shutdown_within(_millis_until(deadline))
        if self.owns_provider:
            done = _shutdown_provider(self.tracer_provider, deadline) and done
        self._shutdown_result = done
        logger.info("reec_otel shut down (%s).", "complete" if done else "deadline reached")
        return done

    def statistics(self) -> Statistics:
        if self.processor is None:
            return Statistics()
        writer_stats = self.processor.writer
        base = writer_stats.statistics() if isinstance(writer_stats, BatchWriter) else None
        fields = dataclasses.asdict(base) if base is not None else {}
        return Statistics(**fields, processor_errors=self.processor.errors)


def configure(
    *,
    database_url: str | URL | None = None,
    application_name: str | None = None,
    enable_global_db_save: bool | None = None,
    log_job: LogJobOptions | None = None,
    tracer_provider: TracerProvider | None = None,
    max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
    shutdown_timeout_millis: int = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS,
) -> ReecOtel:
    """Set reec_otel up for this process and return its handle.

    Arguments win over ``REEC_*`` environment variables, which win over the
    defaults: SQLite file ``reec_jobs.db``, application name from the OTel
    service name, global saving on. Never connects to the database: the table
    is created when the background writer first connects. Calling it again
    shuts the previous handle down first.

    Args:
        database_url: SQLAlchemy URL of the database for LogJob rows.
        application_name: stored on every row; cleanup and queries filter on it.
        enable_global_db_save: False writes nothing to any database.
        log_job: LogJob options; given, they win wholesale over ``REEC_LOG_JOB_*``.
        tracer_provider: the SDK provider to attach to.
        max_queue_rows: rows held in memory while the database is slow or away.
        batch_rows: rows per transaction at most.
        flush_interval_seconds: how long a row may wait for its batch.
        shutdown_timeout_millis: the deadline of `shutdown()` and of exit.
    """
    env = os.environ
    save_global = resolve_bool(enable_global_db_save, env, ENV_ENABLE_GLOBAL_DB_SAVE, default=True)
    options = log_job if log_job is not None else LogJobOptions.from_environment(env)
    if not isinstance(options, LogJobOptions):
        raise ConfigurationError(f"log_job must be a LogJobOptions; got {options!r}.")
    url = resolve_database_url(database_url, env) if save_global and options.is_save_db else None

    # Everything that can fail on bad settings happens before the previous
    # handle is shut down, so that a mistake leaves the running setup alone.
    writer = None
    if url is not None:
        writer = BatchWriter(
            create_database_engine(url),
            log_job_table(options.table_name, options.schema),
            max_queue_rows=max_queue_rows,
            batch_rows=batch_rows,
            flush_interval_seconds=flush_interval_seconds,
        )

    with _lock:
        previous = _current
        if previous is not None:
            previous.shutdown()
        provider, owns = _provider(tracer_provider, env, previous)
        name = _application_name(application_name, env, provider)
        processor = None
        if writer is not None:
            processor = LogJobSpanProcessor(application_name=name, log_job=options, writer=writer)
            provider.add_span_processor(processor)
        handle = ReecOtel(
            tracer_provider=provider,
            owns_provider=owns,
            application_name=name,
            processor=processor,
            database_url=url,
            shutdown_timeout_millis=shutdown_timeout_millis,
        )
        _install(handle)
    logger.info("reec_otel configured: %r", handle)
    return handle


def current() -> ReecOtel | None:
    """The handle `configure()` last returned, unless it was shut down."""
    return _current


def _install(handle: ReecOtel) -> None:
    global _current
    tracer = handle.tracer_provider.get_tracer(_tracing.INSTRUMENTATION_NAME, __version__)
    _tracing.keep_job_spans(tracer)
    _tracing.install(tracer)
    _current = handle
    _register_exit(handle)


def _uninstall(handle: ReecOtel) -> None:
    global _current
    with _lock:
        if _current is handle:
            _current = None
            _tracing.install(None)


def _register_exit(handle: ReecOtel) -> None:
    reference = weakref.ref(handle)

    def shutdown_at_exit() -> None:
        target = reference()
        if target is not None:
            target.shutdown()

    atexit.register(shutdown_at_exit)


def _provider(
    given: TracerProvider | None, env: Mapping[str, str], previous: ReecOtel | None
) -> tuple[TracerProvider, bool]:
    if given is not None:
        if not isinstance(given, TracerProvider):
            raise ConfigurationError(
                "tracer_provider must be an OpenTelemetry SDK TracerProvider "
                f"(opentelemetry.sdk.trace.TracerProvider); got {type(given).__name__}."
            )
        return given, False
    existing = trace.get_tracer_provider()
    created_before = (
        previous is not None and previous.owns_provider and (existing is previous.tracer_provider)
    )
    if isinstance(existing, TracerProvider) and not created_before:
        return existing, False
    provider = TracerProvider(resource=Resource.create(), shutdown_on_exit=False)
    for exporter in _exporters_from_environment(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if created_before:
        logger.info(
            "The global tracer provider, set by an earlier configure(), cannot be replaced; "
            "job spans go through the new handle's provider."
        )
    else:
        trace.set_tracer_provider(provider)
    return provider, True


def _exporters_from_environment(env: Mapping[str, str]) -> list[SpanExporter]:
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        if not any(env.get(name) for name in _ENDPOINT_VARIABLES):
            logger.info(
                "No OTEL_TRACES_EXPORTER or OTLP endpoint is set: job spans are not exported; "
                "LogJob rows are still written."
            )
            return []
        raw = "otlp"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    return [_exporter(name, env) for name in names if name != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be 'grpc' or 'http/protobuf'; got {protocol!r}."
            )
        name = _OTLP_BY_PROTOCOL[protocol]
    found = entry_points(group=_EXPORTER_GROUP, name=name)
    if not found:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER names {name!r}, but no installed package provides a "
            "span exporter by that name."
        )
    exporter_class: Any = next(iter(found)).load()
    exporter: SpanExporter = exporter_class()
    return exporter


def _application_name(
    argument: str | None, env: Mapping[str, str], provider: TracerProvider
) -> str:
    name = argument if argument is not None else env.get(ENV_APPLICATION_NAME)
    source = "application_name" if argument is not None else ENV_APPLICATION_NAME
    if name is None:
        service = provider.resource.attributes.get("service.name")
        name = str(service) if service else "unknown_service"
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ConfigurationError(
            f"{source} must be a non-empty string of at most 255 characters; got {name!r}."
        )
    return name


def _shutdown_provider(provider: TracerProvider, deadline: float) -> bool:
    # The SDK's shutdown takes no deadline (an unreachable OTLP endpoint can
    # hold it for its whole export timeout), so it runs aside and is awaited
    # only until ours.
    finished = threading.Event()

    def run() -> None:
        try:
            provider.force_flush(_millis_until(deadline))
            provider.shutdown()
        finally:
            finished.set()

    threading.Thread(target=run, name="reec-otel-provider-shutdown", daemon=True).start()
    return finished.wait(max(deadline - time.monotonic(), 0))


def _millis_until(deadline: float) -> int:
    return max(int((deadline - time.monotonic()) * 1000), 0)
