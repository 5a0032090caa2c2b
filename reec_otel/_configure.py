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

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracer
from sqlalchemy import Table
from sqlalchemy.engine import URL

from reec_otel import _sanitize, _signals, _tracing
from reec_otel._errors import ConfigurationError, LifecycleError
from reec_otel._exporters import create_exporters
from reec_otel._processor import LogJobSpanProcessor
from reec_otel._retention import start_clean_scheduler
from reec_otel._sanitize import Sanitizer
from reec_otel._schedule import CleanScheduler
from reec_otel._schema import log_job_table
from reec_otel._settings import (
    ENV_APPLICATION_NAME,
    ENV_ENABLE_GLOBAL_DB_SAVE,
    UNNAMED_APPLICATION,
    LogJobOptions,
    application_name_of_service,
    resolve_bool,
    resolve_database_url,
    validate_application_name,
)
from reec_otel._spool import DEFAULT_SPOOL_MAX_BYTES, Spool, default_spool_directory
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
SERVICE_NAME = "service.name"


_lock = threading.RLock()
_current: ReecOtel | None = None


class HandleState(enum.Enum):
    RUNNING = "running"
    SHUT_DOWN = "shut down"


@dataclasses.dataclass(frozen=True)
class Statistics:
    """What the handle's writer and processor have done so far.

    ``rows_queued`` counts rows accepted and not yet written, those waiting in
    the spool file included (``rows_spooled``). ``rows_dropped`` counts rows
    that fit neither memory nor spool, exactly. ``internal_errors`` and
    ``processor_errors`` count faults of reec_otel itself, each logged.
    """

    rows_written: int = 0
    rows_queued: int = 0
    rows_spooled: int = 0
    rows_dropped: int = 0
    rows_rejected: int = 0
    write_failures: int = 0
    internal_errors: int = 0
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
        log_job: LogJobOptions | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.owns_provider = owns_provider
        self.application_name = application_name
        self.processor = processor
        self.database_url = database_url
        self.shutdown_timeout_millis = shutdown_timeout_millis
        self.log_job = log_job
        self.clean_scheduler: CleanScheduler | None = None
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
        _signals.uninstall_sigterm_handler(self)
        done = True
        if self.clean_scheduler is not None:
            done = self.clean_scheduler.stop(_millis_until(deadline))
        if self.processor is not None:
            done = self.processor.shutdown_within(_millis_until(deadline)) and done
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
    spool_directory: str | os.PathLike[str] | None = None,
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
    sanitizer: Sanitizer | None = None,
    handle_sigterm: bool = False,
) -> ReecOtel:
    """Set reec_otel up for this process and return its handle.

    Arguments win over ``REEC_*`` environment variables, which win over the
    defaults: SQLite file ``reec_jobs.db``, application name from the OTel
    service name, global saving on. Never connects to the database: the table
    is created when the background writer first connects. Calling it again
    shuts the previous handle down first. When rows are written and
    ``log_job.enable_clean`` is on, it starts the cleanup scheduler
    (`CleanLogJobWorker` on ``log_job.clean_cron``); `shutdown()` stops it.

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
        spool_directory: where rows wait on disk while the database is away;
            by default a per-user state directory keyed by application, table
            and database.
        spool_max_bytes: size cap of this process's spool file; 0 keeps rows
            in memory only.
        sanitizer: ``fn(text) -> text`` applied to every text a job produces
            (message, data, exception) before it reaches the span or a row;
            ``reec_otel.redact_secrets`` is a ready one.
        handle_sigterm: on SIGTERM, end the running job as Failed, write its
            rows and span, and exit with status 143 (see `install_sigterm_handler`).
    """
    env = os.environ
    save_global = resolve_bool(enable_global_db_save, env, ENV_ENABLE_GLOBAL_DB_SAVE, default=True)
    options = log_job if log_job is not None else LogJobOptions.from_environment(env)
    if not isinstance(options, LogJobOptions):
        raise ConfigurationError(f"log_job must be a LogJobOptions; got {options!r}.")
    if sanitizer is not None and not callable(sanitizer):
        raise ConfigurationError(f"sanitizer must be a callable (str -> str); got {sanitizer!r}.")
    if type(spool_max_bytes) is not int or spool_max_bytes < 0:
        raise ConfigurationError(
            f"spool_max_bytes must be a whole number of bytes, 0 or more; got {spool_max_bytes!r}."
        )
    url = resolve_database_url(database_url, env) if save_global and options.is_save_db else None

    # Everything that can fail on bad settings happens before the previous
    # handle is shut down, so that a mistake leaves the running setup alone.
    if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
        raise ConfigurationError(
            "tracer_provider must be an OpenTelemetry SDK TracerProvider "
            f"(opentelemetry.sdk.trace.TracerProvider); got {type(tracer_provider).__name__}."
        )
    explicit_name = _explicit_application_name(application_name, env)
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
        provider, owns = _provider(tracer_provider, env, previous, explicit_name)
        name = explicit_name or _service_name(provider)
        processor = None
        if writer is not None and url is not None:
            # The spool's default place is keyed by the application's name,
            # known only now; no row has reached the writer yet.
            writer.spool = _spool(url, writer.table, name, spool_directory, spool_max_bytes)
            processor = LogJobSpanProcessor(application_name=name, log_job=options, writer=writer)
            provider.add_span_processor(processor)
        handle = ReecOtel(
            tracer_provider=provider,
            owns_provider=owns,
            application_name=name,
            processor=processor,
            database_url=url,
            shutdown_timeout_millis=shutdown_timeout_millis,
            log_job=options,
        )
        _install(handle)
        _sanitize.install(sanitizer)
        if handle_sigterm:
            _signals.install_sigterm_handler(handle)
        handle.clean_scheduler = start_clean_scheduler(handle)
    logger.info("reec_otel configured: %r", handle)
    return handle


def _spool(
    url: URL,
    table: Table,
    application_name: str,
    directory: str | os.PathLike[str] | None,
    max_bytes: int,
) -> Spool | None:
    if max_bytes == 0:
        return None
    if directory is None:
        where = url.render_as_string(hide_password=True)
        directory = default_spool_directory(where, table.fullname, application_name)
    return Spool(directory, max_bytes)


def current() -> ReecOtel | None:
    """The handle `configure()` last returned, unless it was shut down."""
    return _current


def _install(handle: ReecOtel) -> None:
    global _current
    tracer = handle.tracer_provider.get_tracer(_tracing.INSTRUMENTATION_NAME, __version__)
    if isinstance(tracer, NoOpTracer) and handle.writes_rows:
        # The SDK hands out no-op tracers when OTEL_SDK_DISABLED is true: no
        # job span is recorded, so no LogJob row can be written either.
        logger.warning(
            "The OpenTelemetry SDK is disabled (OTEL_SDK_DISABLED=true): jobs run, "
            "but no job spans are recorded and no LogJob rows are written."
        )
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
            _sanitize.install(None)


def _register_exit(handle: ReecOtel) -> None:
    reference = weakref.ref(handle)

    def shutdown_at_exit() -> None:
        target = reference()
        if target is not None:
            target.shutdown()

    atexit.register(shutdown_at_exit)


def _provider(
    given: TracerProvider | None,
    env: Mapping[str, str],
    previous: ReecOtel | None,
    application_name: str | None,
) -> tuple[TracerProvider, bool]:
    if given is not None:
        return given, False
    existing = trace.get_tracer_provider()
    created_before = (
        previous is not None and previous.owns_provider and (existing is previous.tracer_provider)
    )
    if isinstance(existing, TracerProvider) and not created_before:
        return existing, False
    resource = Resource.create()
    unnamed = application_name_of_service(resource.attributes.get(SERVICE_NAME))
    if application_name and unnamed == UNNAMED_APPLICATION:
        # No OTEL_SERVICE_NAME: traces carry the application's name, as rows do.
        resource = resource.merge(Resource({SERVICE_NAME: application_name}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
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
    exporters = create_exporters(env)
    if not exporters:
        logger.info(
            "No OTEL_TRACES_EXPORTER or OTLP endpoint is set: job spans are not exported; "
            "LogJob rows are still written."
        )
    return exporters


def _explicit_application_name(argument: str | None, env: Mapping[str, str]) -> str | None:
    """The application name given as an argument or in the environment, checked."""
    if argument is not None:
        return validate_application_name(argument, "application_name")
    if env.get(ENV_APPLICATION_NAME) is not None:
        return validate_application_name(env[ENV_APPLICATION_NAME], ENV_APPLICATION_NAME)
    return None


def _service_name(provider: TracerProvider) -> str:
    name = application_name_of_service(provider.resource.attributes.get(SERVICE_NAME))
    if name == UNNAMED_APPLICATION:
        logger.warning(
            "No application name is set (application_name, %s or OTEL_SERVICE_NAME): "
            "LogJob rows are stored under %r.",
            ENV_APPLICATION_NAME,
            name,
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
