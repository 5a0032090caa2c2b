"""How the writer turns a batch into statements: values kept exactly, odd rows handled."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import event

from reec_otel import log_job_table
from reec_otel._writer import BatchWriter, _rows_per_statement, create_database_engine
from tests.row_factory import make_row


def a_row(**overrides: Any) -> dict[str, Any]:
    """A row whose values test the driver: unicode, quotes, placeholders, JSON."""
    created = dt.datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=dt.UTC)
    values: dict[str, Any] = {
        "application_name": "statements",
        "name_job": "ñandú 🦤 job",
        "state_job": "Failed",
        "duration_ms": 12.25,
        "exception_type": "builtins.ValueError",
        "exception": "it's 100% wrong; \\ and ? and %s and %(name)s stay text",
        "stack_trace": "Traceback (most recent call last):\n  ...",
        "data": json.dumps({"invoices": 3, "note": "é"}, ensure_ascii=False),
        "message": None,
        "create_user": "ana",
        "create_date": created,
    }
    return make_row(**(values | overrides))


def test_every_value_of_a_batch_is_stored_exactly_as_given(writer, backend):
    rows = [a_row(duration_ms=float(index)) for index in range(2_500)]
    for row in rows:
        writer.submit(row)
    assert writer.force_flush(60_000)

    stored = {r["span_id"]: r for r in backend.rows()}
    assert len(stored) == len(rows)
    for row in rows:
        kept = stored[row["span_id"]]
        for column, value in row.items():
            expected = json.loads(value) if column == "data" else value
            assert kept[column] == expected, column


def test_a_row_holding_a_value_its_column_cannot_take_is_set_aside_and_the_rest_written(
    writer, backend
):
    naive = dt.datetime(2026, 1, 1, 12, 0)  # timestamps must be timezone-aware
    good = [a_row() for _ in range(4)]
    for row in [good[0], a_row(create_date=naive), *good[1:]]:
        writer.submit(row)
    assert writer.force_flush(30_000)

    assert sorted(r["span_id"] for r in backend.rows()) == sorted(r["span_id"] for r in good)
    stats = writer.statistics()
    assert (stats.rows_written, stats.rows_rejected) == (4, 1)
    assert "create_date" in (stats.last_error or "")


def test_rows_carrying_different_columns_in_one_batch_are_all_written(writer, backend):
    full = a_row()
    sparse = {k: v for k, v in a_row().items() if k not in ("message", "data", "create_user")}
    for row in (full, sparse):
        writer.submit(row)
    assert writer.force_flush(30_000)

    stored = {r["span_id"]: r for r in backend.rows()}
    assert set(stored) == {full["span_id"], sparse["span_id"]}
    kept = stored[sparse["span_id"]]
    assert (kept["message"], kept["data"], kept["create_user"]) == (None, None, None)
    assert stored[full["span_id"]]["create_user"] == "ana"


def test_a_sqlite_batch_is_sent_as_few_multi_row_statements(sqlite_backend):
    engine = create_database_engine(sqlite_backend.url)
    writer = BatchWriter(engine, log_job_table(sqlite_backend.table_name), batch_rows=2_500)
    inserts: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        for _ in range(2_500):
            writer.submit(a_row())
        assert writer.force_flush(60_000)
    finally:
        writer.shutdown(10_000)
    assert len(sqlite_backend.rows()) == 2_500
    # As many rows per statement as SQLite's parameter limit allows, at most 1 000.
    step = _rows_per_statement("sqlite", 15)
    full, rest = divmod(2_500, step)
    expected = [step] * full + ([rest] if rest else [])
    assert [statement.count("(?, ") for statement, _ in inserts] == expected
    assert all(
        len(parameters) == 15 * rows
        for (_, parameters), rows in zip(inserts, expected, strict=True)
    )
