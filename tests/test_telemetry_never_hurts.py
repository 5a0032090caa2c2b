"""Whatever fails in reec_otel's processor or writer stays there: the job goes on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

import reec_otel
from reec_otel import LogJobSpanProcessor, StateJob, Worker, log_job_table
from reec_otel._writer import BatchWriter, create_database_engine
from tests.conftest import Backend, Tracing
from tests.row_factory import make_row
from tests.tcp_proxy import unused_loopback_port


class BrokenSink:
    """A row sink that fails on every row."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, row: Any) -> bool:
        self.calls += 1
        raise RuntimeError("sink is broken")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        return True


def test_a_failing_processor_never_reaches_the_job_and_later_processors_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    sink = BrokenSink()
    processor = LogJobSpanProcessor(writer=sink, application_name="broken")
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = reec_otel.configure(tracer_provider=provider, enable_global_db_save=False)
    try:
        with caplog.at_level(logging.WARNING, logger="reec_otel"):
            results = [
                Worker(f"job-{i}", run_function=lambda ctx: "fine").execute() for i in range(5)
            ]
    finally:
        handle.shutdown(5_000)
        provider.shutdown()

    assert all(r.state is StateJob.SUCCEEDED for r in results)
    assert len(exporter.get_finished_spans()) == 5, "the processor after ours saw every span"
    assert sink.calls == 10  # one row per start and end reached the broken sink
    assert processor.errors == 10
    warnings = [r for r in caplog.records if "failed to turn a span" in r.getMessage()]
    assert len(warnings) == 2, "one warning per place (start, end), not one per span"


def test_an_unreachable_database_changes_no_outcome_and_never_runs_a_job_twice(
    tracing: Tracing, tmp_path: Any
) -> None:
    calls = {"ok": 0, "bad": 0}

    def ok(ctx: reec_otel.JobContext) -> str:
        calls["ok"] += 1
        return "fine"

    def bad(ctx: reec_otel.JobContext) -> None:
        calls["bad"] += 1
        raise ValueError("as planned")

    port = unused_loopback_port()
    handle = reec_otel.configure(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
        spool_directory=tmp_path,
    )
    try:
        first = Worker("ok", run_function=ok).execute()
        second = Worker("bad", run_function=bad).execute()
        assert not handle.force_flush(1_000)
    finally:
        handle.shutdown(1_000)
    assert (first.state, first.message) == (StateJob.SUCCEEDED, "fine")
    assert second.state is StateJob.FAILED
    assert isinstance(second.exception, ValueError)
    assert calls == {"ok": 1, "bad": 1}


def _row(name: str | None, state: str = "Succeeded") -> dict[str, Any]:
    return make_row(application_name="rejects", name_job=name, state_job=state, message=None)


def test_a_row_the_database_refuses_is_set_aside_and_every_other_row_is_written(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    writer = BatchWriter(
        create_database_engine(backend.url),
        log_job_table(backend.table_name),
        flush_interval_seconds=0.05,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="reec_otel"):
            for row in [_row("a"), _row("b"), _row(None), _row("c")]:
                writer.submit(row)
            assert writer.force_flush(30_000)
            writer.submit(_row("d"))
            assert writer.force_flush(30_000)
        statistics = writer.statistics()
    finally:
        writer.shutdown(10_000)
    assert [r["name_job"] for r in backend.rows()] == ["a", "b", "c", "d"]
    assert (statistics.rows_written, statistics.rows_rejected) == (4, 1)
    assert any("set aside a row" in r.getMessage() for r in caplog.records)


@pytest.fixture
def instrumented_sqlalchemy(tracing: Tracing) -> Iterator[None]:
    instrumentor = SQLAlchemyInstrumentor()
    # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1, and works with it.
    instrumentor.instrument(tracer_provider=tracing.provider, skip_dep_check=True)
    try:
        yield
    finally:
        instrumentor.uninstrument()


def test_with_sqlalchemy_instrumented_the_writer_makes_no_spans_and_no_extra_rows(
    instrumented_sqlalchemy: None, backend: Backend, tracing: Tracing
) -> None:
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="instrumented",
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    try:
        for index in range(3):
            Worker(f"job-{index}", run_function=lambda ctx: "ok").execute()
        assert handle.force_flush(30_000)
    finally:
        handle.shutdown(10_000)
    names = sorted(span.name for span in tracing.spans())
    assert names == ["job-0", "job-1", "job-2"]
    assert len(backend.rows()) == 9, "three states for each of three jobs, nothing else"

    # The instrumentation is live: the application's own statement is traced.
    control = create_engine(backend.url)
    try:
        with control.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        control.dispose()
    assert "connect" in [span.name for span in tracing.spans()]
