"""Edge cases of the job-tracing core: hostile spans, limits, sampling, lifecycle.

Each test states a behaviour the contract asks for in a corner that is easy to
get wrong: spans from other code, the SDK's attribute limits, samplers,
shutdown races, odd identifiers and data. A defect found and not yet fixed is
marked ``xfail(strict=True)`` where it lives, so that the suite turns red the
day it is fixed and the mark goes with the fix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
import warnings

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NoOpTracerProvider
from sqlalchemy import create_engine, event, inspect, text

import reec_otel
from reec_otel import ConfigurationError, LogJobSpanProcessor, StateJob, Worker, log_job_table
from reec_otel._text import MAX_DATA_CHARS
from reec_otel._writer import BatchWriter, create_database_engine
from tests.row_factory import make_row


def states(rows):
    return [r["state_job"] for r in rows]


# -- the writer ---------------------------------------------------------------


def test_a_row_the_database_refuses_never_holds_back_the_rows_behind_it(request, backend):
    # MariaDB checks JSON columns with a CHECK constraint; PyMySQL reports its
    # violation (error 4025) as an OperationalError, which the writer takes for
    # an outage and retries for ever, with every later row stuck behind it.
    writer = BatchWriter(
        create_database_engine(backend.url),
        log_job_table(backend.table_name),
        flush_interval_seconds=0.05,
    )
    try:
        writer.submit(make_row(name_job="poison", data='{"ratio": NaN}'))
        for _ in range(3):
            writer.submit(make_row(name_job="healthy"))
        flushed = writer.force_flush(2_500)
    finally:
        writer.shutdown(500)
    assert flushed
    assert len(backend.rows(name_job="healthy")) == 3


def test_a_batch_larger_than_the_server_packet_limit_is_still_written(request, backend):
    # Rows at the package's own text limits: 18 failures of 1 Mi-byte stack
    # traces go over MariaDB's default 16 MiB max_allowed_packet in one INSERT;
    # the server drops the connection, the writer takes it for an outage and
    # retries the same oversized statement for ever.
    big = "\U0001f600" * 262_000  # four bytes a character in UTF-8
    writer = BatchWriter(
        create_database_engine(backend.url),
        log_job_table(backend.table_name),
        flush_interval_seconds=5,
    )
    try:
        for _ in range(18):
            writer.submit(make_row(state_job="Failed", stack_trace=big))
        flushed = writer.force_flush(5_000)
    finally:
        writer.shutdown(500)
    assert flushed
    assert len(backend.rows()) == 18


# -- rows from jobs -----------------------------------------------------------


def test_job_data_with_a_non_finite_number_still_reaches_the_final_row_as_valid_json(
    backend, tracing
):
    def measure(ctx):
        ctx.data["ratio"] = math.nan
        ctx.data["limit"] = math.inf
        return "measured"

    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    try:
        Worker("measure", run_function=measure).execute()
        flushed = handle.force_flush(2_500)
    finally:
        handle.shutdown(500)

    rows = backend.rows()
    assert flushed
    assert states(rows) == ["Enqueued", "Processing", "Succeeded"]
    # Stored data is standard JSON: no NaN or Infinity tokens.
    json.dumps(rows[-1]["data"], allow_nan=False)


def test_a_job_that_sets_many_attributes_on_its_span_still_gets_its_final_row(configured, backend):
    def annotate(ctx):
        for index in range(130):  # the SDK keeps 128 attributes a span by default
            ctx.span.set_attribute(f"app.field_{index}", index)
        return "annotated"

    Worker("annotate", run_function=annotate).execute()
    configured.force_flush(10_000)
    assert states(backend.rows()) == ["Enqueued", "Processing", "Succeeded"]


def test_an_attribute_length_limit_on_the_provider_never_loses_the_final_row(backend):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        span_limits=SpanLimits(max_span_attribute_length=100), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=backend.log_job,
        tracer_provider=provider,
        flush_interval_seconds=0.05,
    )
    try:

        def run(ctx):
            ctx.data["customer"] = "c" * 200
            raise ValueError("refused by the bank")

        Worker("limited", run_function=run).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
        provider.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Failed"]


def test_an_exception_the_job_records_on_its_own_span_is_not_taken_for_its_failure(
    configured, backend
):
    def run(ctx):
        try:
            {}["optional-setting"]
        except KeyError as handled:
            ctx.span.record_exception(handled)
        raise RuntimeError("the real failure")

    Worker("self-recording", run_function=run).execute()
    configured.force_flush(10_000)

    failed = backend.rows(state_job="Failed")[0]
    assert failed["exception_type"] == "builtins.RuntimeError"
    assert failed["exception"] == "the real failure"


# -- the Worker -----------------------------------------------------------------


def test_deeply_nested_job_data_never_makes_execute_raise(tracing):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)

    def run(ctx):
        nested: list = []
        for _ in range(5_000):
            nested = [nested]
        ctx.data["tree"] = nested
        return "built"

    try:
        result = Worker("deep", run_function=run).execute()
    finally:
        handle.shutdown()
    assert result.state is StateJob.SUCCEEDED


def test_an_exception_with_malformed_notes_is_recorded_and_execute_returns(tracing):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)

    def run(ctx):
        error = ValueError("odd notes")
        error.__notes__ = 42  # traceback prints it; nothing checks the type
        raise error

    try:
        result = Worker("odd-notes", run_function=run).execute()
    finally:
        handle.shutdown()
    assert result.state is StateJob.FAILED
    assert isinstance(result.exception, ValueError)


# -- configure() ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"application_name": ""}, id="empty-application-name"),
        pytest.param({"tracer_provider": NoOpTracerProvider()}, id="non-sdk-provider"),
    ],
)
def test_a_configure_call_refused_for_bad_settings_leaves_the_running_handle_alone(
    tracing, sqlite_backend, bad
):
    running = reec_otel.configure(
        database_url=sqlite_backend.url, application_name="app", tracer_provider=tracing.provider
    )
    try:
        arguments = {
            "database_url": sqlite_backend.url,
            "application_name": "app",
            "tracer_provider": tracing.provider,
            **bad,
        }
        with pytest.raises(ConfigurationError):
            reec_otel.configure(**arguments)
        Worker("still-running", run_function=lambda ctx: None).execute()
        assert running.state.value == "running"
        running.force_flush(10_000)
        assert len(sqlite_backend.rows(name_job="still-running")) == 3
    finally:
        running.shutdown()


# -- the writer: bounds, drops, deadlines ----------------------------------------


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_writer_never_holds_more_rows_than_its_bound_while_a_batch_is_in_flight(backend):
    engine = create_database_engine(backend.url)
    writer = BatchWriter(
        engine,
        log_job_table(backend.table_name),
        max_queue_rows=5,
        batch_rows=5,
        flush_interval_seconds=0.01,
    )
    connecting = threading.Event()
    release = threading.Event()

    def slow_then_unreachable(*args):
        connecting.set()
        release.wait(10)
        raise engine.dialect.loaded_dbapi.OperationalError("simulated outage")

    event.listen(engine, "do_connect", slow_then_unreachable)
    try:
        for _ in range(5):
            writer.submit(make_row())
        assert connecting.wait(10)  # the five rows are in flight
        for _ in range(5):
            writer.submit(make_row())
        release.set()
        stats = writer.statistics()
    finally:
        release.set()
        writer.shutdown(500)
    assert stats.rows_queued + stats.rows_written <= 5
    assert stats.rows_dropped == 5


def test_rows_left_unwritten_at_the_shutdown_deadline_are_counted_as_dropped():
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/none"
    writer = BatchWriter(create_database_engine(url), log_job_table(), flush_interval_seconds=0.01)
    for _ in range(3):
        writer.submit(make_row())
    assert not writer.shutdown(300)
    stats = writer.statistics()
    assert stats.rows_written == 0
    assert stats.rows_dropped == 3


def test_the_final_row_of_a_job_that_ends_after_shutdown_is_counted_as_dropped(configured, backend):
    started = threading.Event()
    release = threading.Event()

    def run(ctx):
        started.set()
        release.wait(10)

    thread = threading.Thread(target=Worker("outlived", run_function=run).execute)
    thread.start()
    try:
        assert started.wait(10)
        assert configured.shutdown(10_000)
    finally:
        release.set()
        thread.join(10)
    assert states(backend.rows()) == ["Enqueued", "Processing"]
    assert configured.statistics().rows_dropped == 1


def test_the_writer_closes_its_connections_when_it_finishes_after_the_shutdown_deadline(
    backend,
):
    engine = create_database_engine(backend.url)
    writer = BatchWriter(engine, log_job_table(backend.table_name), flush_interval_seconds=0.01)
    inserting = threading.Event()
    release = threading.Event()

    def slow_insert(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT"):
            inserting.set()
            release.wait(10)

    event.listen(engine, "before_cursor_execute", slow_insert)
    try:
        writer.submit(make_row())
        assert inserting.wait(10)
        assert not writer.shutdown(100)  # the deadline passes mid-statement
        release.set()
        writer._thread.join(10)
        open_connections = engine.pool.checkedin()
    finally:
        release.set()
        engine.dispose()
    assert len(backend.rows()) == 1
    assert open_connections == 0


# -- the processor used on its own ------------------------------------------------


def test_a_processor_refuses_an_application_name_longer_than_its_column():
    with pytest.raises(ConfigurationError, match="application_name"):
        LogJobSpanProcessor("sqlite://", application_name="a" * 300)


def test_a_job_span_from_other_code_with_data_that_is_not_json_still_gets_its_final_row(
    backend, tracing
):
    processor = LogJobSpanProcessor(backend.url, application_name="tests", log_job=backend.log_job)
    tracing.provider.add_span_processor(processor)
    try:
        tracer = tracing.provider.get_tracer("legacy-scheduler")
        with tracer.start_as_current_span(
            "nightly", attributes={"reec.job.name": "nightly"}
        ) as span:
            span.set_attribute("reec.job.data", "42 invoices, 3 skipped")
        processor.force_flush(10_000)
    finally:
        processor.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Succeeded"]


def test_a_processor_used_on_its_own_keeps_failures_the_sampler_drops(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    code = f"""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
        import reec_otel

        provider = TracerProvider(sampler=ALWAYS_OFF)
        processor = reec_otel.LogJobSpanProcessor({url!r}, application_name="alone")
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        reec_otel.Worker("unsampled", run_function=lambda ctx: 1 / 0).execute()
        assert processor.force_flush(10_000)
        processor.shutdown()
        print("ran")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))},
    )
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            has_table = inspect(connection).has_table("log_job")
            found = (
                connection.execute(text("SELECT state_job FROM log_job ORDER BY id_log_job"))
                .scalars()
                .all()
                if has_table
                else []
            )
    finally:
        engine.dispose()
    assert found == ["Enqueued", "Processing", "Failed"]


# -- trace identifiers and async --------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("\u0664" * 32, id="arabic-indic-digits"),
        pytest.param("\uff11" * 32, id="fullwidth-digits"),
        pytest.param("urn:4bf92f3577b34da6a3ce929d0e0e4736", id="urn-prefix-without-uuid"),
        pytest.param("----4bf92f3577b34da6a3ce929d0e0e4736", id="dashes-anywhere"),
    ],
)
def test_a_trace_identifier_that_is_not_32_ascii_hex_digits_or_a_uuid_is_refused(given):
    with pytest.raises(ValueError, match="trace_identifier"):
        Worker("odd-id", trace_identifier=given)


def test_a_run_function_returning_a_coroutine_inside_a_running_loop_is_refused_cleanly(tracing):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)

    async def fetch(ctx):
        return "fetched"

    made = []

    def run(ctx):
        made.append(fetch(ctx))
        return made[-1]

    async def main():
        return Worker("wrapped-async", run_function=run).execute()

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = asyncio.run(main())
            except RuntimeError as exc:
                message = str(exc)
            else:
                message = str(outcome.exception)
            outcome = None  # drop the traceback that holds the coroutine
            gc.collect()
    finally:
        handle.shutdown()
        for coroutine in made:  # leave nothing to warn later, outside this test
            coroutine.close()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []
    assert "execute_async" in message


# -- the table --------------------------------------------------------------------


def test_every_table_name_the_options_accept_can_be_created_and_written(request, backend, tracing):
    # LogJobOptions accepts 63 characters, but the constraint and index names
    # add up to 15 more: PostgreSQL cuts them to 63 and two collide (every row
    # is then refused); MariaDB refuses names over 64 with error 1059, which
    # PyMySQL reports as an OperationalError, retried for ever as an outage.
    name = f"log_job_{uuid.uuid4().hex}".ljust(63, "x")
    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=reec_otel.LogJobOptions(table_name=name),
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    try:
        Worker("long-table", run_function=lambda ctx: None).execute()
        handle.force_flush(3_000)
        written = handle.statistics().rows_written
    finally:
        handle.shutdown(500)
        log_job_table(name).drop(backend.engine, checkfirst=True)
    assert written == 3


# -- where a run belongs ----------------------------------------------------------


def test_a_job_made_inside_a_request_and_handed_to_a_thread_pool_continues_the_request_trace(
    tracing,
):
    # A job made inside a request belongs to that request, wherever it runs:
    # handing it to another thread or queue must not start a new trace.
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)
    try:
        with (
            tracing.provider.get_tracer("web").start_as_current_span("POST /invoices") as request,
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
        ):
            worker = Worker("send-invoice", run_function=lambda ctx: "sent")
            result = pool.submit(worker.execute).result(timeout=10)
    finally:
        handle.shutdown()
    assert result.trace_identifier == f"{request.get_span_context().trace_id:032x}"


def test_the_iworker_protocol_includes_the_run_function_and_its_exception_handler():
    # IWorker is the execution contract: run_function, run_function_exception
    # and is_light_execution, besides the two ways to execute.
    class ExecutesNothing:
        name_job = "empty"
        is_light_execution = False

        def execute(self):
            raise NotImplementedError

        async def execute_async(self):
            raise NotImplementedError

    assert not isinstance(ExecutesNothing(), reec_otel.IWorker)


def test_a_run_cancelled_during_its_delay_records_no_delay_as_its_duration(tracing):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)

    async def main():
        task = asyncio.create_task(
            Worker("cancelled-early", delay=5, run_function=lambda ctx: None).execute_async()
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        handle.shutdown()
    (span,) = tracing.spans("cancelled-early")
    assert span.attributes["reec.job.state"] == "Failed"
    # The duration excludes the delay, and processing never started.
    assert span.attributes["reec.job.duration_ms"] < 250


def test_a_job_span_from_other_code_whose_light_flag_is_the_text_false_is_stored_in_full(
    backend, tracing
):
    processor = LogJobSpanProcessor(backend.url, application_name="tests", log_job=backend.log_job)
    tracing.provider.add_span_processor(processor)
    try:
        tracer = tracing.provider.get_tracer("legacy-scheduler")
        attributes = {"reec.job.name": "report", "reec.job.light": "false"}
        with tracer.start_as_current_span("report", attributes=attributes):
            pass
        processor.force_flush(10_000)
    finally:
        processor.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Succeeded"]


# -- sampling and the SDK switch --------------------------------------------------


def test_an_explicit_trace_identifier_leaves_export_to_the_application_s_sampler(backend):
    # The application exports no trace it starts itself; a trace identifier
    # handed over as text carries no sampling decision to inherit.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=backend.log_job,
        tracer_provider=provider,
        flush_interval_seconds=0.05,
    )
    try:
        Worker(
            "continued",
            trace_identifier="4bf92f3577b34da6a3ce929d0e0e4736",
            run_function=lambda ctx: 1 / 0,
        ).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
        provider.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Failed"]
    assert [s.name for s in exporter.get_finished_spans()] == []


def test_turning_the_opentelemetry_sdk_off_is_said_loudly_and_jobs_still_run(
    monkeypatch, backend, caplog
):
    # OTEL_SDK_DISABLED makes the SDK hand out no-op tracers: no job span is
    # recorded, so no row can be built from one. That must not pass in silence.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    provider = TracerProvider(shutdown_on_exit=False)
    with caplog.at_level("WARNING", logger="reec_otel._configure"):
        handle = reec_otel.configure(
            database_url=backend.url, log_job=backend.log_job, tracer_provider=provider
        )
    try:
        result = Worker("sdk-off", run_function=lambda ctx: 1 / 0).execute()
    finally:
        handle.shutdown()
        provider.shutdown()
    assert "OTEL_SDK_DISABLED" in caplog.text
    assert result.state is StateJob.FAILED
    assert len(result.trace_identifier) == 32


def test_job_data_cut_to_its_limit_stays_within_the_limit(tracing):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)

    def run(ctx):
        ctx.data["quoted"] = '"' * 300_000

    try:
        Worker("quotes", run_function=run).execute()
    finally:
        handle.shutdown()
    (span,) = tracing.spans("quotes")
    assert len(span.attributes["reec.job.data"]) <= MAX_DATA_CHARS


def test_a_job_span_from_other_code_with_a_non_finite_duration_still_gets_its_final_row(
    request, backend, tracing
):
    processor = LogJobSpanProcessor(backend.url, application_name="tests", log_job=backend.log_job)
    tracing.provider.add_span_processor(processor)
    try:
        tracer = tracing.provider.get_tracer("legacy-scheduler")
        with tracer.start_as_current_span("import", attributes={"reec.job.name": "import"}) as span:
            span.set_attribute("reec.job.duration_ms", math.nan)
        processor.force_flush(10_000)
    finally:
        processor.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Succeeded"]
