"""LogJob rows, read back by SQL, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import threading
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from sqlalchemy import inspect

import reec_otel
from reec_otel import LogJobOptions, StateJob, Worker


def states(rows):
    return [r["state_job"] for r in rows]


def test_a_successful_run_writes_enqueued_processing_and_succeeded(configured, backend):
    before = dt.datetime.now(dt.UTC)
    result = Worker("sync", create_user="ana", run_function=lambda ctx: "12 synced").execute()
    after = dt.datetime.now(dt.UTC)
    assert configured.force_flush(10_000)

    rows = backend.rows()
    assert states(rows) == ["Enqueued", "Processing", "Succeeded"]
    assert {r["trace_identifier"] for r in rows} == {result.trace_identifier}
    assert {r["span_id"] for r in rows} == {result.span_id}
    assert {r["application_name"] for r in rows} == {"tests"}
    assert {r["create_user"] for r in rows} == {"ana"}
    final = rows[-1]
    assert final["message"] == "12 synced"
    assert final["duration_ms"] == pytest.approx(result.duration_ms)
    assert rows[0]["duration_ms"] is None
    assert rows[0]["create_date"] == rows[1]["create_date"]
    for row in rows:
        assert row["create_date"].tzinfo is not None
        assert before - dt.timedelta(seconds=1) <= row["create_date"] <= after
        assert row["create_date_only"] == row["create_date"].astimezone(dt.UTC).date()


def test_a_failed_run_stores_type_message_cause_and_full_stack_trace(configured, backend):
    def load(ctx):
        try:
            int("x1")
        except ValueError as exc:
            raise RuntimeError("settings unreadable") from exc

    result = Worker("load", run_function=load).execute()
    configured.force_flush(10_000)

    failed = backend.rows(state_job="Failed")[0]
    assert states(backend.rows()) == ["Enqueued", "Processing", "Failed"]
    assert failed["trace_identifier"] == result.trace_identifier
    assert failed["exception_type"] == "builtins.RuntimeError"
    assert failed["exception"] == "settings unreadable"
    assert failed["inner_exception"] == "invalid literal for int() with base 10: 'x1'"
    assert "direct cause of the following exception" in failed["stack_trace"]
    assert "in load" in failed["stack_trace"]
    assert failed["duration_ms"] is not None


def test_the_inner_exception_falls_back_to_the_context(configured, backend):
    def load(ctx):
        try:
            {}["missing"]
        except KeyError:
            raise OSError("while handling")  # noqa: B904 - the implicit context is the point

    Worker("context", run_function=load).execute()
    configured.force_flush(10_000)
    assert backend.rows(state_job="Failed")[0]["inner_exception"] == "'missing'"


def test_an_exception_group_keeps_every_member_in_the_stack_trace(configured, backend):
    def run(ctx):
        raise ExceptionGroup("two shards failed", [ValueError("shard 1"), TimeoutError("shard 2")])

    Worker("group", run_function=run).execute()
    configured.force_flush(10_000)
    failed = backend.rows(state_job="Failed")[0]
    assert failed["exception_type"] == "builtins.ExceptionGroup"
    assert "ValueError: shard 1" in failed["stack_trace"]
    assert "TimeoutError: shard 2" in failed["stack_trace"]


def test_a_failing_handler_is_recorded_together_with_the_job_exception(configured, backend):
    def run(ctx):
        raise ValueError("job broke")

    def handler(ctx, exc):
        raise ConnectionError("pager unreachable")

    Worker("double", run_function=run, run_function_exception=handler).execute()
    configured.force_flush(10_000)
    failed = backend.rows(state_job="Failed")[0]
    assert failed["exception_type"] == "builtins.ExceptionGroup"
    assert "job broke" in failed["exception"] and "pager unreachable" in failed["exception"]
    assert failed["inner_exception"] == "job broke"
    assert "ValueError: job broke" in failed["stack_trace"]
    assert "ConnectionError: pager unreachable" in failed["stack_trace"]


def test_job_data_is_stored_as_json_on_the_final_row(configured, backend):
    def run(ctx):
        ctx.data.update({"count": 3, "skipped": None, "ids": [1, "two", {"three": 3.0}]})

    Worker("data", run_function=run).execute()
    configured.force_flush(10_000)
    rows = backend.rows()
    assert rows[-1]["data"] == {"count": 3, "skipped": None, "ids": [1, "two", {"three": 3.0}]}
    assert rows[0]["data"] is None


def test_light_mode_writes_only_failures(configured, backend):
    Worker("light-ok", is_light_execution=True, run_function=lambda ctx: "ok").execute()
    Worker("light-bad", is_light_execution=True, run_function=lambda ctx: 1 / 0).execute()
    configured.force_flush(10_000)
    rows = backend.rows()
    assert [(r["name_job"], r["state_job"]) for r in rows] == [("light-bad", "Failed")]
    assert rows[0]["exception_type"] == "builtins.ZeroDivisionError"


def test_a_running_job_already_shows_enqueued_and_processing(configured, backend):
    seen = []

    def run(ctx):
        configured.force_flush(10_000)
        seen.extend(states(backend.rows()))

    Worker("visible", run_function=run).execute()
    assert seen == ["Enqueued", "Processing"]


def test_a_delayed_job_writes_enqueued_at_submission_and_processing_after_the_delay(
    configured, backend
):
    release = threading.Event()

    def run(ctx):
        release.wait(10)

    worker = Worker("delayed", delay=1.0, create_user="scheduler", run_function=run)
    thread = threading.Thread(target=worker.execute)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not backend_has(backend, "Enqueued") and time.monotonic() < deadline:
            configured.force_flush(10_000)
        during_delay = states(backend.rows())
        while not backend_has(backend, "Processing") and time.monotonic() < deadline:
            configured.force_flush(10_000)
        during_processing = states(backend.rows())
    finally:
        release.set()
        thread.join(10)
    configured.force_flush(10_000)

    rows = backend.rows()
    assert during_delay == ["Enqueued"]
    assert during_processing == ["Enqueued", "Processing"]
    assert states(rows) == ["Enqueued", "Processing", "Succeeded"]
    assert len({r["span_id"] for r in rows}) == 1
    assert {r["create_user"] for r in rows} == {"scheduler"}
    waited = rows[1]["create_date"] - rows[0]["create_date"]
    assert waited >= dt.timedelta(seconds=1)
    assert rows[2]["duration_ms"] < waited.total_seconds() * 1000


def backend_has(backend, state):
    return state in states(backend.rows())


def test_switching_off_global_saving_writes_nothing_but_still_exports(backend, tracing):
    handle = reec_otel.configure(
        database_url=backend.url,
        enable_global_db_save=False,
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
    )
    try:
        Worker("unsaved", run_function=lambda ctx: 1 / 0).execute()
        assert handle.force_flush(10_000)
        assert handle.processor is None
    finally:
        handle.shutdown()
    assert not inspect(backend.engine).has_table(backend.table_name)
    assert len(tracing.spans("unsaved")) == 1


def test_switching_off_log_job_saving_writes_no_rows_but_still_exports(backend, tracing):
    options = LogJobOptions(is_save_db=False, table_name=backend.table_name)
    handle = reec_otel.configure(
        database_url=backend.url, log_job=options, tracer_provider=tracing.provider
    )
    try:
        Worker("unsaved", run_function=lambda ctx: "x").execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
    assert not inspect(backend.engine).has_table(backend.table_name)
    assert len(tracing.spans("unsaved")) == 1


def test_a_failure_is_stored_even_when_the_sampler_drops_every_span(backend):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = reec_otel.configure(
        database_url=backend.url, log_job=backend.log_job, tracer_provider=provider
    )
    try:
        result = Worker("unsampled", run_function=lambda ctx: 1 / 0).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
        provider.shutdown()
    assert states(backend.rows()) == ["Enqueued", "Processing", "Failed"]
    assert backend.rows()[-1]["trace_identifier"] == result.trace_identifier
    assert exporter.get_finished_spans() == ()


def test_the_application_name_defaults_to_the_service_name(backend):
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(
        resource=Resource.create({"service.name": "billing-api"}), shutdown_on_exit=False
    )
    handle = reec_otel.configure(
        database_url=backend.url, log_job=backend.log_job, tracer_provider=provider
    )
    try:
        Worker("named", run_function=lambda ctx: None).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
        provider.shutdown()
    assert handle.application_name == "billing-api"
    assert {r["application_name"] for r in backend.rows()} == {"billing-api"}


def test_every_row_of_concurrent_runs_is_written_once(configured, backend):
    def run_many():
        for _ in range(50):
            Worker("parallel", run_function=lambda ctx: None).execute()

    threads = [threading.Thread(target=run_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert configured.force_flush(30_000)
    rows = backend.rows()
    assert len(rows) == 4 * 50 * 3
    assert len({(r["span_id"], r["state_job"]) for r in rows}) == len(rows)
    assert configured.statistics().rows_written == len(rows)
    assert StateJob.SUCCEEDED.value in states(rows)


def test_a_job_submitted_to_a_busy_pool_is_enqueued_at_once_and_processing_when_it_starts(
    configured, backend
):
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(release.wait, 10)  # keeps the only thread busy
        future = Worker("queued", run_function=lambda ctx: "done").submit(pool)
        configured.force_flush(10_000)
        waiting = states(backend.rows())
        release.set()
        result = future.result(10)
    configured.force_flush(10_000)

    rows = backend.rows()
    assert waiting == ["Enqueued"]
    assert states(rows) == ["Enqueued", "Processing", "Succeeded"]
    assert {r["span_id"] for r in rows} == {result.span_id}
    assert rows[1]["create_date"] > rows[0]["create_date"]
    assert result.message == "done"
