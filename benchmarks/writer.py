"""Writer: rows per second from job spans to committed rows, next to a raw insert.

Job spans are made first by real Worker runs (full mode: three rows each,
every tenth run failing), and the span processor turns them into rows.
Timed: the writer, from the first row submitted until ``force_flush``
returns. The reference inserts the same rows into a table of the same shape
on the same database, as multi-row ``INSERT`` statements through the bare
driver, one commit per batch of the writer's size. Turning spans into rows
happens on the job's thread and is counted in the hot path; the figure
``from_spans_rows_per_s`` times spans fed to the processor end to end.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from sqlalchemy import Table
from sqlalchemy.engine import Engine

import reec_otel
from benchmarks._common import SERVER_URLS, Sizes, server_unreachable, unique_table_name
from reec_otel import LogJobSpanProcessor, Worker, log_job_table
from reec_otel._schema import ROW_COLUMNS
from reec_otel._writer import (
    DEFAULT_BATCH_ROWS,
    BatchWriter,
    Row,
    create_database_engine,
)

BACKENDS = ("sqlite", "postgresql", "mariadb")
# Writer and raw insert run alternately this many times; the fastest of each counts,
# since the servers may be shared and a slower pass measures the others' load.
PAIRS = 3


class _Keep(SpanProcessor):
    """Keeps every finished span, to be replayed into the processor under test."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)  # type: ignore[arg-type]


class _ListSink:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def submit(self, row: Row) -> bool:
        self.rows.append(row)
        return True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        return True


def job_spans(jobs: int) -> list[Span]:
    """Finished spans of *jobs* real Worker runs, every tenth one failing."""
    keep = _Keep()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(keep)
    handle = reec_otel.configure(
        enable_global_db_save=False, application_name="bench", tracer_provider=provider
    )

    def body(ctx: Any) -> str:
        ctx.data["n"] = 1
        return "done"

    def failing(ctx: Any) -> str:
        raise ValueError("the job failed")

    for index in range(jobs):
        Worker("bench", run_function=failing if index % 10 == 9 else body).execute()
    handle.shutdown()
    provider.shutdown()
    return keep.spans


def replay(processor: LogJobSpanProcessor, spans: list[Span]) -> None:
    for span in spans:
        processor.on_start(span)
        processor.on_end(span)


def run_one(url: str, spans: list[Span], warm: list[Span]) -> dict[str, Any]:
    sink = _ListSink()
    replay(LogJobSpanProcessor(application_name="bench", writer=sink), spans)
    rows = sink.rows
    writer_s: list[float] = []
    raw_s: list[float] = []
    for _ in range(PAIRS):
        tables = [unique_table_name() for _ in range(2)]
        try:
            writer_s.append(_timed_writer(url, tables[0], warm, lambda w, p: _submit_all(w, rows)))
            raw_s.append(raw_insert(create_database_engine(url), log_job_table(tables[1]), rows))
        finally:
            _drop(url, tables)
    table = unique_table_name()
    try:
        spans_s = _timed_writer(url, table, warm, lambda w, p: replay(p, spans))
    finally:
        _drop(url, [table])
    return {
        "rows_per_s": len(rows) / min(writer_s),
        "raw_rows_per_s": len(rows) / min(raw_s),
        "ratio": min(raw_s) / min(writer_s),
        "from_spans_rows_per_s": len(rows) / spans_s,
        "rows": len(rows),
        "pairs": PAIRS,
    }


def _drop(url: str, tables: list[str]) -> None:
    engine = create_database_engine(url)
    for name in tables:
        log_job_table(name).drop(engine, checkfirst=True)
    engine.dispose()


def _submit_all(writer: BatchWriter, rows: list[Row]) -> None:
    for row in rows:
        writer.submit(row)


def _timed_writer(url: str, table_name: str, warm: list[Span], feed: Any) -> float:
    """Seconds from the first row (or span) fed to the writer until all are committed."""
    writer = BatchWriter(create_database_engine(url), log_job_table(table_name))
    processor = LogJobSpanProcessor(application_name="bench", writer=writer)
    replay(processor, warm)  # creates the table, opens the connection
    processor.force_flush(60_000)
    before = writer.statistics().rows_written
    started = time.perf_counter()
    feed(writer, processor)
    if not writer.force_flush(600_000):
        raise RuntimeError("the writer did not finish in time")
    elapsed = time.perf_counter() - started
    stats = writer.statistics()
    writer.shutdown()
    if stats.rows_dropped or stats.rows_rejected:
        raise RuntimeError(f"the writer lost rows: {stats}")
    if stats.rows_written - before == 0:
        raise RuntimeError("the writer wrote nothing")
    return elapsed


def raw_insert(engine: Engine, table: Table, rows: list[Row]) -> float:
    """Seconds to insert *rows* with the bare driver, multi-row, a commit per batch.

    The clock includes turning each row into the driver's values (a
    timestamp as text on SQLite), as a hand-written insert would.
    """
    table.create(engine)
    dialect = engine.dialect.name
    # Rows per statement so that its parameters stay under the backend's limit.
    step = (32_766 if dialect == "sqlite" else 65_535) // len(ROW_COLUMNS)
    convert = _raw_conversions(dialect)
    marker = "?" if dialect == "sqlite" else "%s"
    one = "(" + ", ".join([marker] * len(ROW_COLUMNS)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(ROW_COLUMNS)}) VALUES "
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        for batch_start in range(0, len(rows), DEFAULT_BATCH_ROWS):
            batch = rows[batch_start : batch_start + DEFAULT_BATCH_ROWS]
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                flat = [convert(row, c) for row in chunk for c in ROW_COLUMNS]
                cursor.execute(head + ", ".join([one] * len(chunk)), flat)
            connection.commit()
        elapsed = time.perf_counter() - started
        cursor.close()
    finally:
        connection.close()
    engine.dispose()
    return elapsed


def _raw_conversions(dialect: str) -> Any:
    """How a hand-written insert would pass a row's value: dates as text on SQLite."""
    if dialect == "postgresql":
        return lambda row, column: row[column]
    if dialect == "sqlite":
        dates = {
            "create_date": lambda d: d.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" "),
            "create_date_only": dt.date.isoformat,
        }
    else:
        dates = {"create_date": lambda d: d.astimezone(dt.UTC).replace(tzinfo=None)}

    def convert(row: Row, column: str) -> Any:
        value = row[column]
        to_driver = dates.get(column)
        return value if to_driver is None else to_driver(value)

    return convert


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    spans = job_spans(sizes.writer_jobs)
    warm = job_spans(10)
    results: dict[str, Any] = {}
    for backend in BACKENDS:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'writer.db'}"
        else:
            reason = server_unreachable(backend)
            if reason is not None:
                results[backend] = {"skipped": reason}
                continue
            url = SERVER_URLS[backend]
        results[backend] = run_one(url, spans, warm)
    return results
