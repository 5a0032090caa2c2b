"""Rows the span processor leaves to the writer's thread to finish, spans of
other code with odd attributes or times, the worker's cached check of its
functions, and sinks in place of the writer.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from reec_otel import LogJobSpanProcessor, Worker, log_job_table
from reec_otel import _attributes as attrs
from reec_otel._schema import LogJobRow
from reec_otel._writer import BatchWriter, create_database_engine
from tests.conftest import Backend
from tests.row_factory import ListSink, run_one_job_span


class _Rows:
    """A provider whose job spans become rows through a real BatchWriter."""

    def __init__(self, backend: Backend, **writer_options: Any) -> None:
        self.backend = backend
        options: dict[str, Any] = {"flush_interval_seconds": 0.05, **writer_options}
        self.writer = BatchWriter(
            create_database_engine(backend.url), log_job_table(backend.table_name), **options
        )
        self.processor = LogJobSpanProcessor(writer=self.writer, application_name="pending")
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("other.code")

    def flush(self) -> bool:
        return self.writer.force_flush(5_000)

    def rows(self) -> list[dict[str, Any]]:
        return self.backend.rows()


@pytest.fixture
def job_rows(backend: Backend) -> Iterator[_Rows]:
    rows = _Rows(backend)
    yield rows
    rows.provider.shutdown()


@pytest.fixture
def sqlite_rows(sqlite_backend: Backend) -> Iterator[_Rows]:
    rows = _Rows(sqlite_backend)
    yield rows
    rows.provider.shutdown()


def _states(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["state_job"], r["span_id"]) for r in rows]


# -- spans of other code that carry two attributes, one of them reec.job.name --


def test_a_job_span_of_other_code_with_a_name_and_a_user_alone_keeps_the_user(
    sqlite_rows: _Rows,
) -> None:
    span = sqlite_rows.tracer.start_span(
        "import", attributes={attrs.NAME: "import", attrs.CREATE_USER: "ana"}
    )
    span.end()
    assert sqlite_rows.flush()
    rows = sqlite_rows.rows()
    assert [r["state_job"] for r in rows] == ["Enqueued", "Processing", "Succeeded"]
    assert [r["create_user"] for r in rows] == ["ana", "ana", "ana"]


def test_a_deferred_job_span_of_other_code_with_a_name_alone_is_not_processing_at_once(
    sqlite_rows: _Rows,
) -> None:
    span = sqlite_rows.tracer.start_span(
        "later", attributes={attrs.NAME: "later", attrs.DEFERRED: True}
    )
    sqlite_rows.flush()
    # Submitted, not started: Enqueued only, as for a Worker's deferred run.
    assert [r["state_job"] for r in sqlite_rows.rows()] == ["Enqueued"]
    span.end()


def test_a_processing_child_of_other_code_with_a_name_alone_writes_its_parent_s_processing(
    sqlite_rows: _Rows,
) -> None:
    from opentelemetry import trace

    tracer = sqlite_rows.tracer
    job = tracer.start_span(
        "later", attributes={attrs.NAME: "later", attrs.LIGHT: False, attrs.DEFERRED: True}
    )
    with trace.use_span(job, end_on_exit=True):
        child = tracer.start_span(
            "later processing",
            attributes={attrs.NAME: "later", attrs.PHASE: attrs.PHASE_PROCESSING},
        )
        child.end()
    assert sqlite_rows.flush()
    job_id = f"{job.get_span_context().span_id:016x}"
    # Every row carries the job span's id; the child makes no run of its own.
    assert _states(sqlite_rows.rows()) == [
        ("Enqueued", job_id),
        ("Processing", job_id),
        ("Succeeded", job_id),
    ]


# -- spans of other code timed in float nanoseconds --------------------------


def test_a_job_span_of_other_code_timed_in_float_nanoseconds_is_written_whole(
    job_rows: _Rows,
) -> None:
    # The SDK takes any number for start and end times.
    start = float(time.time_ns())
    span = job_rows.tracer.start_span("floaty", attributes={attrs.NAME: "floaty"}, start_time=start)
    span.end(end_time=start + 5e6)
    job_rows.flush()
    rows = job_rows.rows()
    context = span.get_span_context()
    assert [r["state_job"] for r in rows] == ["Enqueued", "Processing", "Succeeded"]
    for row in rows:
        assert row["trace_identifier"] == f"{context.trace_id:032x}"
        assert row["span_id"] == f"{context.span_id:016x}"
        assert row["create_date_only"] is not None
    assert job_rows.writer.statistics().rows_rejected == 0


# -- one row that cannot be finished -----------------------------------------


def test_a_span_ending_at_an_impossible_instant_does_not_stop_the_writer(
    sqlite_rows: _Rows,
) -> None:
    # Other code ends a job span with a time in the wrong unit (picoseconds):
    # far past the year 9999. That row alone is lost; every other is written.
    odd = sqlite_rows.tracer.start_span("odd", attributes={attrs.NAME: "odd"})
    odd.end(end_time=time.time_ns() * 1000)
    sqlite_rows.flush()
    good = sqlite_rows.tracer.start_span("good", attributes={attrs.NAME: "good"})
    good.end()
    sqlite_rows.flush()
    names = [(r["name_job"], r["state_job"]) for r in sqlite_rows.rows()]
    assert ("good", "Succeeded") in names
    assert ("odd", "Enqueued") in names
    # The row of the impossible instant is refused and counted, as the
    # database would refuse it.
    assert ("odd", "Succeeded") not in names
    stats = sqlite_rows.writer.statistics()
    assert stats.rows_rejected == 1 and stats.rows_queued == 0
    assert "OverflowError" in (stats.last_error or "")


def test_shutdown_does_not_say_finished_when_rows_of_its_last_batch_were_lost(
    sqlite_backend: Backend,
) -> None:
    rows = _Rows(sqlite_backend, flush_interval_seconds=60)
    good = rows.tracer.start_span("good", attributes={attrs.NAME: "good"})
    good.end()
    odd = rows.tracer.start_span("odd", attributes={attrs.NAME: "odd"})
    odd.end(end_time=time.time_ns() * 1000)
    finished = rows.writer.shutdown(5_000)
    stats = rows.writer.statistics()
    written = len(sqlite_backend.rows())
    rows.provider.shutdown()
    # The odd span may cost its own row, counted; the good run's three rows
    # are written, and "finished" means no accepted row is left unaccounted.
    assert written >= 3, (finished, stats, written)
    assert not finished or stats.rows_queued == 0, (finished, stats, written)


# -- the worker's own thread -------------------------------------------------


def test_a_worker_lets_go_of_a_run_function_it_no_longer_has() -> None:
    class Payload:
        pass

    payload = Payload()
    alive = weakref.ref(payload)

    def run(ctx: object, _payload: Payload = payload) -> str:
        return "done"

    worker = Worker("holder", run_function=run)
    assert worker.execute().succeeded
    worker.run_function = lambda ctx: None  # the old function, and its data, let go
    del run, payload
    gc.collect()
    assert alive() is None, "the worker's cached check still holds the old run function"


# -- sinks ---------------------------------------------------------------------


class _CountingWriter(BatchWriter):
    """A BatchWriter of an application that counts what it is handed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed: list[Any] = []

    def submit(self, row: Any) -> bool:
        self.handed.append(row)
        return super().submit(row)


def test_a_batch_writer_subclass_still_gets_every_row_through_its_submit(
    sqlite_backend: Backend,
) -> None:
    writer = _CountingWriter(
        create_database_engine(sqlite_backend.url),
        log_job_table(sqlite_backend.table_name),
        flush_interval_seconds=0.05,
    )
    run_one_job_span(writer)
    assert len(sqlite_backend.rows()) == 3
    assert len(writer.handed) == 3, "the processor went around the sink's submit()"
    assert all(isinstance(row, LogJobRow) for row in writer.handed)


def test_a_processor_whose_writer_is_replaced_hands_rows_to_the_new_one(
    sqlite_rows: _Rows,
) -> None:
    sink = ListSink()
    sqlite_rows.processor.writer = sink  # a public attribute
    sqlite_rows.tracer.start_span("j", attributes={attrs.NAME: "j"}).end()
    sqlite_rows.writer.force_flush(5_000)
    assert len(sink.rows) == 3
    assert sqlite_rows.rows() == []


def test_a_job_span_of_other_code_started_at_the_epoch_is_dated_at_the_epoch(
    sqlite_rows: _Rows,
) -> None:
    span = sqlite_rows.tracer.start_span("old", attributes={attrs.NAME: "old"}, start_time=0)
    span.end(end_time=1_000_000_000)
    assert sqlite_rows.flush()
    dates = {r["state_job"]: r["create_date"] for r in sqlite_rows.rows()}
    # SQLite reads timestamps back naive; compare the UTC wall clock.
    assert dates["Enqueued"].replace(tzinfo=None).year == 1970
    assert dates["Succeeded"].replace(tzinfo=None).year == 1970
