"""LogJobRow: the compact row the processor hands the writer, read as a mapping."""

from __future__ import annotations

import copy
import datetime as dt
import gc
import pickle

import pytest
from opentelemetry.sdk.trace import TracerProvider

import reec_otel
from reec_otel import LogJobSpanProcessor, Worker, log_job_table
from reec_otel._schema import (
    COLUMN_NAMES,
    ROW_COLUMNS,
    LogJobRow,
    finish_rows,
    is_pending,
    pending_row,
    row_of_pending,
)
from reec_otel._writer import BatchWriter, create_database_engine
from tests.conftest import Backend
from tests.row_factory import ListSink, make_row

CREATED = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)


def _row(state: str = "Enqueued") -> LogJobRow:
    return LogJobRow("billing", "sync", state, "a" * 32, "b" * 16, "ana", CREATED)


def test_it_holds_every_column_but_the_id_in_table_order() -> None:
    row = _row()
    assert list(row) == [name for name in COLUMN_NAMES if name != "id_log_job"]
    assert list(row) == list(ROW_COLUMNS)
    assert len(row) == len(ROW_COLUMNS)
    assert row["create_date_only"] == CREATED.date()
    assert row["duration_ms"] is None and row["exception"] is None


def test_it_reads_as_the_dict_of_the_same_columns() -> None:
    row = _row()
    row.message = "done"
    same = {**make_row(), **row.as_dict()}
    assert row == same
    assert dict(row) == same
    assert row.get("message") == "done"
    assert row.get("no_such_column", "fallback") == "fallback"
    assert row.get("get") is None, "method names are not columns"
    with pytest.raises(KeyError):
        row["id_log_job"]


def test_it_keeps_values_in_slots_not_in_a_dict_per_row() -> None:
    row = _row()
    assert not hasattr(row, "__dict__")
    with pytest.raises(AttributeError):
        row.not_a_column = 1  # type: ignore[attr-defined]


def test_rows_of_both_kinds_in_one_batch_are_written_alike(
    writer: BatchWriter, backend: Backend
) -> None:
    compact = _row("Succeeded")
    compact.duration_ms = 4.5
    plain = make_row(span_id="c" * 16, state_job="Failed", exception_type="ValueError")
    assert writer.submit(compact)
    assert writer.submit(plain)
    assert writer.force_flush(10_000)

    stored = {row["span_id"]: row for row in backend.rows()}
    assert stored["b" * 16]["duration_ms"] == 4.5
    assert stored["b" * 16]["create_date"] == CREATED
    assert stored["b" * 16]["create_user"] == "ana"
    assert stored["c" * 16]["exception_type"] == "ValueError"
    assert writer.statistics().rows_written == 2


def test_a_row_after_one_with_fewer_columns_in_the_same_batch_keeps_all_its_values(
    backend: Backend,
) -> None:
    # Two rows per batch and a long interval: both rows go in one batch.
    engine = create_database_engine(backend.url)
    writer = BatchWriter(
        engine, log_job_table(backend.table_name), batch_rows=2, flush_interval_seconds=60
    )
    sparse = {k: v for k, v in make_row(span_id="c" * 16).items() if k != "message"}
    compact = _row("Failed")
    compact.message = "kept"
    compact.duration_ms = 4.5
    try:
        assert writer.submit(sparse)
        assert writer.submit(compact)
        assert writer.force_flush(10_000)
    finally:
        writer.shutdown(10_000)

    stored = {row["span_id"]: row for row in backend.rows()}
    assert stored["c" * 16]["message"] is None
    assert stored["b" * 16]["message"] == "kept"
    assert stored["b" * 16]["duration_ms"] == 4.5


def test_it_survives_pickling_under_every_protocol_and_copying_as_a_dict_does() -> None:
    row = _row("Failed")
    row.data = '{"k": 1}'
    row.duration_ms = 2.5
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(row, protocol))
        assert type(back) is LogJobRow and back == row, protocol
    shallow, deep = copy.copy(row), copy.deepcopy(row)
    assert shallow == row and deep == row
    shallow.message = "only the copy"
    assert row.message is None


def test_a_queued_row_leaves_the_garbage_collector_s_watch_as_a_dict_would(tmp_path) -> None:
    # A full queue holds 100 000 rows: were they watched, every full collection
    # of the application would walk them all.
    engine = create_database_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    writer = BatchWriter(engine, log_job_table("log_job"), flush_interval_seconds=60)
    try:
        for index in range(10):
            assert writer.submit(_row("Failed" if index % 2 else "Enqueued"))
        gc.collect()
        assert len(writer._queue) == 10
        assert not any(gc.is_tracked(entry) for entry in writer._queue)
        assert writer.statistics().rows_queued == 10
    finally:
        writer.shutdown(10_000)


def test_its_values_come_in_the_order_of_the_columns() -> None:
    row = _row()
    for index, column in enumerate(ROW_COLUMNS):
        setattr(row, column, f"value {index}")
    assert row.values_in_order() == tuple(f"value {i}" for i in range(len(ROW_COLUMNS)))


# -- pending rows: what the span processor queues, finished on the writer's thread


def _pending(state: str = "Enqueued") -> tuple:
    return pending_row(
        "billing",
        "sync",
        state,
        0x0123456789ABCDEF0123456789ABCDEF,
        0xFF,
        "ana",
        1_772_600_767_890_123_999,  # 2026-03-04T05:06:07.890123999Z
        duration_ms=12.5,
        message="done",
        data='{"k": 1}',
        exception_type="builtins.ValueError",
        exception="bad",
        inner_exception="worse",
        stack_trace="Traceback",
    )


def test_a_pending_row_becomes_the_row_of_the_same_columns() -> None:
    row = row_of_pending(_pending())
    assert dict(row) == {
        "application_name": "billing",
        "name_job": "sync",
        "state_job": "Enqueued",
        "trace_identifier": "0123456789abcdef0123456789abcdef",
        "span_id": "00000000000000ff",
        "duration_ms": 12.5,
        "exception_type": "builtins.ValueError",
        "exception": "bad",
        "inner_exception": "worse",
        "stack_trace": "Traceback",
        "data": '{"k": 1}',
        "message": "done",
        "create_user": "ana",
        # Microseconds are cut, not rounded, as the database keeps them.
        "create_date": CREATED,
        "create_date_only": CREATED.date(),
    }


def test_finishing_changes_pending_rows_alone_and_only_once() -> None:
    finished = _row().values_in_order()
    mapping = make_row()
    rows = [_pending(), finished, mapping, _pending("Failed")]
    assert is_pending(rows[0]) and not is_pending(finished) and not is_pending(mapping)
    finish_rows(rows)
    assert rows[1] is finished and rows[2] is mapping
    assert rows[0] == row_of_pending(_pending()).values_in_order()
    assert rows[3][ROW_COLUMNS.index("state_job")] == "Failed"
    again = list(rows)
    finish_rows(again)
    assert again == rows


def test_queued_pending_rows_leave_the_garbage_collector_s_watch_too(tmp_path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    writer = BatchWriter(engine, log_job_table("log_job"), flush_interval_seconds=60)
    try:
        assert writer.submit_pending(_pending("Enqueued"), _pending("Processing"))
        gc.collect()
        assert len(writer._queue) == 2
        assert not any(gc.is_tracked(entry) for entry in writer._queue)
    finally:
        writer.shutdown(10_000)


def test_a_sink_of_its_own_gets_finished_log_job_rows() -> None:
    sink = ListSink()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(LogJobSpanProcessor(writer=sink, application_name="billing"))
    handle = reec_otel.configure(tracer_provider=provider, enable_global_db_save=False)
    try:
        done = Worker("sync", create_user="ana", run_function=lambda ctx: "synced").execute()
        failed = Worker("sync", is_light_execution=True, run_function=lambda ctx: 1 / 0).execute()
    finally:
        handle.shutdown(5_000)
        provider.shutdown()
    assert all(type(row) is LogJobRow for row in sink.rows)
    rows = [dict(row) for row in sink.rows]  # type: ignore[call-overload]
    assert [(r["state_job"], r["span_id"]) for r in rows] == [
        ("Enqueued", done.span_id),
        ("Processing", done.span_id),
        ("Succeeded", done.span_id),
        ("Failed", failed.span_id),
    ]
    assert {r["trace_identifier"] for r in rows[:3]} == {done.trace_identifier}
    assert rows[3]["trace_identifier"] == failed.trace_identifier
    assert rows[0]["create_date"] == rows[1]["create_date"] <= rows[2]["create_date"]
    for row in rows:
        assert row["create_date"].tzinfo is not None
        assert row["create_date_only"] == row["create_date"].date()
        assert row["application_name"] == "billing"
    assert rows[2]["message"] == "synced" and rows[2]["create_user"] == "ana"
    assert rows[3]["exception_type"] == "builtins.ZeroDivisionError"
    assert "1 / 0" in rows[3]["stack_trace"]


def test_rows_finished_together_read_as_each_finished_alone() -> None:
    # What is formatted for one row is used again for the next only where
    # they share it: runs interleave, share instants, or share ids.
    def pending(state: str, trace_id: int, span_id: int, time_ns: float) -> tuple:
        return pending_row("billing", "sync", state, trace_id, span_id, None, time_ns)

    t1, t2 = 1_772_600_767_890_123_999, 1_772_600_767_990_000_000
    rows = [
        pending("Enqueued", 1, 10, t1),
        pending("Processing", 1, 10, t1),
        pending("Enqueued", 2, 20, t1),
        pending("Succeeded", 1, 10, t2),
        pending("Succeeded", 2, 10, t2),
        pending("Failed", 2, 20, float(t2)),
        pending("Enqueued", 3, 30, t1 - 1_000),
    ]
    alone = [row_of_pending(row).values_in_order() for row in rows]
    together = list(rows)
    assert finish_rows(together) == []
    assert together == alone
    assert [row[ROW_COLUMNS.index("span_id")] for row in together][:3] == [
        "000000000000000a",
        "000000000000000a",
        "0000000000000014",
    ]
    assert together[-1][ROW_COLUMNS.index("create_date")] == CREATED - dt.timedelta(microseconds=1)


def test_a_row_that_cannot_be_finished_is_taken_out_with_its_reason() -> None:
    good = pending_row("billing", "sync", "Enqueued", 1, 10, None, 1_000)
    too_late = pending_row("billing", "sync", "Succeeded", 1, 10, None, 10**30)
    too_wide = pending_row("billing", "sync", "Enqueued", 1 << 128, 10, None, 1_000)
    rows = [good, too_late, too_wide, good]
    unfinished = finish_rows(rows)
    assert [entry for entry, _ in unfinished] == [too_late, too_wide]
    assert all(isinstance(exc, OverflowError) for _, exc in unfinished)
    assert len(rows) == 2 and not any(is_pending(row) for row in rows)
    with pytest.raises(ValueError, match="cannot be finished"):
        row_of_pending(too_late)
