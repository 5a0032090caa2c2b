"""The background writer: batching, idempotence, its own thread, bounds, deadlines."""

from __future__ import annotations

import logging
import socket
import threading
import time

from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from sqlalchemy import event

import reec_otel
from reec_otel import Worker, log_job_table
from reec_otel._writer import BatchWriter, create_database_engine
from tests.row_factory import make_row


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_row_written_twice_is_stored_once(writer, backend):
    row = make_row(span_id="00000000000000aa")
    writer.submit(row)
    assert writer.force_flush(10_000)
    writer.submit(dict(row, message="retried"))
    assert writer.force_flush(10_000)

    rows = backend.rows()
    assert len(rows) == 1
    assert rows[0]["message"] == "m"


def test_a_batch_larger_than_one_statement_allows_is_written_whole(backend):
    engine = create_database_engine(backend.url)
    writer = BatchWriter(engine, log_job_table(backend.table_name), batch_rows=5_000)
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        for _ in range(4_500):
            writer.submit(make_row())
        assert writer.force_flush(60_000)
    finally:
        writer.shutdown(10_000)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(backend.rows()) == 4_500
    # Split into statements the backend accepts (on SQLite, multi-row ones
    # under its parameter limit), or sent as one executemany that the driver
    # splits: never one statement per row.
    assert 0 < len(inserts) < 50
    if backend.name == "sqlite":
        assert len(inserts) > 1


def test_database_statements_never_run_on_the_job_thread(configured, backend):
    threads = set()
    engine = configured.processor.writer.engine
    event.listen(
        engine, "before_cursor_execute", lambda *a: threads.add(threading.current_thread())
    )
    for _ in range(20):
        Worker("threads", run_function=lambda ctx: None).execute()
    configured.force_flush(10_000)
    assert threads
    assert threading.current_thread() not in threads
    assert {t.name for t in threads} == {"reec-otel-writer"}


def test_the_writer_runs_its_statements_with_instrumentation_suppressed(configured, backend):
    flags = []
    engine = configured.processor.writer.engine
    event.listen(
        engine,
        "before_cursor_execute",
        lambda *a: flags.append(otel_context.get_value(_SUPPRESS_INSTRUMENTATION_KEY)),
    )
    Worker("suppressed", run_function=lambda ctx: None).execute()
    configured.force_flush(10_000)
    assert flags and all(flag is True for flag in flags)


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_is_written(writer, backend, caplog):
    good = [make_row() for _ in range(5)]
    bad = make_row(name_job=None)  # NOT NULL on every backend
    for row in [*good[:2], bad, *good[2:]]:
        writer.submit(row)
    with caplog.at_level(logging.WARNING, logger="reec_otel._writer"):
        assert writer.force_flush(10_000)

    assert len(backend.rows()) == 5
    stats = writer.statistics()
    assert (stats.rows_written, stats.rows_rejected) == (5, 1)
    assert "refused" in caplog.text


def test_rows_beyond_the_bound_are_dropped_and_counted(caplog):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/none"
    writer = BatchWriter(create_database_engine(url), log_job_table(), max_queue_rows=10)
    try:
        with caplog.at_level(logging.WARNING, logger="reec_otel._writer"):
            accepted = [writer.submit(make_row()) for _ in range(25)]
        stats = writer.statistics()
    finally:
        writer.shutdown(500)
    assert accepted.count(False) == 15
    assert stats.rows_dropped == 15
    assert stats.rows_queued + stats.rows_written <= 10
    assert "dropped" in caplog.text


def test_an_unreachable_database_delays_rows_and_never_the_job(tracing):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/none"
    handle = reec_otel.configure(
        database_url=url, application_name="tests", tracer_provider=tracing.provider
    )
    try:
        result = Worker("offline", run_function=lambda ctx: "done").execute()
        assert result.message == "done"
        assert not handle.force_flush(1_000)
        stats = handle.statistics()
        assert stats.rows_queued + stats.rows_written == 3
        assert stats.rows_written == 0
    finally:
        started = time.monotonic()
        finished = handle.shutdown(2_000)
        elapsed = time.monotonic() - started
    assert not finished
    assert elapsed < 2 + 5  # the deadline, with generous slack
    assert len(tracing.spans("offline")) == 1


def test_rows_queued_while_the_database_was_away_are_written_when_it_returns(backend):
    engine = create_database_engine(backend.url)
    table = log_job_table(backend.table_name)
    writer = BatchWriter(engine, table, flush_interval_seconds=0.05)
    failing = {"on": True}

    def refuse_connections(*args):
        if failing["on"]:
            raise engine.dialect.loaded_dbapi.OperationalError("simulated outage")

    # A failing connect hook makes every connection attempt fail like an outage.
    event.listen(engine, "do_connect", refuse_connections)
    try:
        for _ in range(7):
            writer.submit(make_row())
        assert not writer.force_flush(500)
        assert writer.statistics().write_failures >= 1
        failing["on"] = False
        assert writer.force_flush(15_000)
    finally:
        writer.shutdown(10_000)
    assert len(backend.rows()) == 7


def test_shutdown_is_idempotent_and_refuses_later_rows(writer, backend):
    writer.submit(make_row())
    assert writer.shutdown(10_000)
    assert writer.shutdown(10_000)
    assert writer.submit(make_row()) is False
    assert writer.statistics().rows_dropped == 1
    assert len(backend.rows()) == 1
