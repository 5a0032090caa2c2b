"""Writer: rows per second from job spans to committed rows, next to a raw insert.

Job spans are made first by real Worker runs (full mode: three rows each).
Timed: the span processor turns them into rows and the writer commits them,
until ``force_flush`` returns. The reference inserts the same rows into a
table of the same shape on the same database, as multi-row ``INSERT``
statements through the bare driver, one commit per batch of the writer's size.
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
    _rows_per_statement,
    create_database_engine,
)

BACKENDS = ("sqlite", "postgresql", "mariadb")


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
    writer_table = unique_table_name()
    raw_table = unique_table_name()
    engine = create_database_engine(url)
    table = log_job_table(writer_table)
    writer = BatchWriter(engine, table)
    processor = LogJobSpanProcessor(
        application_name="bench", log_job=reec_otel.LogJobOptions(table_name=writer_table),
        writer=writer,
    )
    try:
        replay(processor, warm)  # creates the table, opens the connection
        processor.force_flush(60_000)
        started = time.perf_counter()
        replay(processor, spans)
        if not processor.force_flush(600_000):
            raise RuntimeError("the writer did not finish in time")
        elapsed = time.perf_counter() - started
        stats = writer.statistics()
        written = stats.rows_written - 3 * len(warm)
        processor.shutdown()

        sink = _ListSink()
        replay(LogJobSpanProcessor(application_name="bench", writer=sink), spans)
        raw_elapsed = raw_insert(create_database_engine(url), log_job_table(raw_table), sink.rows)
        return {
            "rows_per_s": written / elapsed,
            "raw_rows_per_s": len(sink.rows) / raw_elapsed,
            "ratio": (written / elapsed) / (len(sink.rows) / raw_elapsed),
            "rows": written,
            "rows_dropped": stats.rows_dropped,
        }
    finally:
        for name in (writer_table, raw_table):
            log_job_table(name).drop(engine, checkfirst=True)
        engine.dispose()


def raw_insert(engine: Engine, table: Table, rows: list[Row]) -> float:
    """Seconds to insert *rows* with the bare driver, multi-row, a commit per batch."""
    table.create(engine)
    dialect = engine.dialect.name
    values = [tuple(_raw_value(row[c], dialect) for c in ROW_COLUMNS) for row in rows]
    step = _rows_per_statement(dialect, len(table.columns))
    marker = "?" if dialect == "sqlite" else "%s"
    one = "(" + ", ".join([marker] * len(ROW_COLUMNS)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(ROW_COLUMNS)}) VALUES "
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        for batch_start in range(0, len(values), DEFAULT_BATCH_ROWS):
            batch = values[batch_start : batch_start + DEFAULT_BATCH_ROWS]
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                flat = [value for row in chunk for value in row]
                cursor.execute(head + ", ".join([one] * len(chunk)), flat)
            connection.commit()
        elapsed = time.perf_counter() - started
        cursor.close()
    finally:
        connection.close()
    engine.dispose()
    return elapsed


def _raw_value(value: Any, dialect: str) -> Any:
    # The driver's own representation, made before the clock starts.
    if isinstance(value, dt.datetime):
        if dialect == "postgresql":
            return value
        naive = value.astimezone(dt.UTC).replace(tzinfo=None)
        return naive if dialect != "sqlite" else naive.isoformat(" ")
    if isinstance(value, dt.date) and dialect == "sqlite":
        return value.isoformat()
    return value


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
