"""Rows finished on the writer's thread: odd ids from id generators of other
code, the processor's choice of how to hand rows to its writer, and the reuse
of what finish_rows() formatted for the row before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from fractions import Fraction
from typing import Any
from unittest import mock

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

import reec_otel
from reec_otel import LogJobSpanProcessor, Worker, log_job_table
from reec_otel import _attributes as attrs
from reec_otel._schema import LogJobRow, finish_rows, pending_row
from reec_otel._writer import BatchWriter, create_database_engine
from tests.conftest import Backend
from tests.row_factory import run_one_job_span


class _FractionTraceIds(IdGenerator):
    """An id generator of other code whose trace ids are exact numbers, not ints.

    The SDK's SpanContext takes them: it only compares them with 0 and the
    largest id, and a Fraction (or a float, or a numpy integer) compares.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> Any:
        return Fraction(self._random.generate_trace_id())


def _writer(backend: Backend, **options: Any) -> BatchWriter:
    return BatchWriter(
        create_database_engine(backend.url),
        log_job_table(backend.table_name),
        **{"flush_interval_seconds": 0.05, **options},
    )


@pytest.fixture
def odd_ids_provider() -> Iterator[TracerProvider]:
    provider = TracerProvider(id_generator=_FractionTraceIds(), shutdown_on_exit=False)
    yield provider
    provider.shutdown()


# -- a pending row that finish_rows() cannot finish and does not catch --------


def test_a_job_span_with_a_trace_id_that_is_not_an_int_does_not_stop_the_writer(
    sqlite_backend: Backend, odd_ids_provider: TracerProvider
) -> None:
    # A Fraction has no to_bytes(): its rows cannot be finished. They are
    # refused and counted; the writer's thread goes on with the others.
    writer = _writer(sqlite_backend)
    odd_processor = LogJobSpanProcessor(writer=writer, application_name="odd")
    odd_ids_provider.add_span_processor(odd_processor)
    plain = TracerProvider(shutdown_on_exit=False)
    plain.add_span_processor(LogJobSpanProcessor(writer=writer, application_name="odd"))
    try:
        odd_ids_provider.get_tracer("other.code").start_span(
            "odd", attributes={attrs.NAME: "odd"}
        ).end()
        writer.force_flush(2_000)
        plain.get_tracer("other.code").start_span("good", attributes={attrs.NAME: "good"}).end()
        flushed = writer.force_flush(5_000)
        stats = writer.statistics()
        names = {(r["name_job"], r["state_job"]) for r in sqlite_backend.rows()}
    finally:
        writer.shutdown(2_000)
    # The odd run's rows may be refused and counted; the good run's rows are
    # written all the same (README "How rows are written": such a row "is set
    # aside with a warning and counted in rows_rejected").
    assert ("good", "Succeeded") in names, (stats, names)
    assert flushed, stats
    assert stats.rows_queued == 0 and stats.rows_rejected == 3, stats


def test_shutdown_does_not_say_finished_when_the_writer_lost_rows_it_could_not_finish(
    sqlite_backend: Backend, odd_ids_provider: TracerProvider
) -> None:
    # shutdown() says it finished only if every accepted row was written,
    # refused, spooled or counted as dropped.
    writer = _writer(sqlite_backend, flush_interval_seconds=60)
    odd_ids_provider.add_span_processor(LogJobSpanProcessor(writer=writer, application_name="r"))
    odd_ids_provider.get_tracer("other.code").start_span(
        "odd", attributes={attrs.NAME: "odd"}
    ).end()
    finished = writer.shutdown(5_000)
    stats = writer.statistics()
    assert not finished or stats.rows_queued == 0, (finished, stats)
    assert stats.rows_written + stats.rows_rejected + stats.rows_dropped == 3, stats


def test_a_log_job_row_without_its_date_is_refused_rather_than_stopping_the_writer(
    sqlite_backend: Backend,
) -> None:
    # A finished row handed to submit() without its date is not a pending
    # row: it goes to the database as it is.
    writer = _writer(sqlite_backend)
    try:
        now = dt.datetime.now(dt.UTC)
        broken = LogJobRow("app", "broken", "Enqueued", "a" * 32, "b" * 16, None, now)
        broken.create_date_only = None  # type: ignore[assignment]
        writer.submit(broken)
        writer.force_flush(2_000)
        writer.submit(LogJobRow("app", "good", "Enqueued", "c" * 32, "d" * 16, None, now))
        flushed = writer.force_flush(5_000)
        stats = writer.statistics()
    finally:
        writer.shutdown(2_000)
    # The database refuses it (create_date_only is NOT NULL); the writer goes on.
    assert flushed, stats
    assert [r["name_job"] for r in sqlite_backend.rows()] == ["good"]
    assert stats.rows_rejected == 1, stats


# -- the worker's own thread -------------------------------------------------


class _WideTraceIds(IdGenerator):
    """An id generator of other code whose trace ids overflow 128 bits."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return (1 << 128) + self._random.generate_trace_id()


@pytest.mark.parametrize("ids", [_WideTraceIds, _FractionTraceIds], ids=["wide", "fraction"])
def test_odd_ids_never_make_a_job_raise(ids: type[IdGenerator]) -> None:
    # Telemetry never raises into the job: ids that do not fit, or are no
    # whole numbers, are stored as text instead.
    provider = TracerProvider(id_generator=ids(), shutdown_on_exit=False)
    handle = reec_otel.configure(
        tracer_provider=provider, enable_global_db_save=False, application_name="odd"
    )
    try:
        result = Worker("odd ids", run_function=lambda ctx: "ok").execute()
    finally:
        handle.shutdown(5_000)
        provider.shutdown()
    assert result.succeeded
    assert result.trace_identifier


# -- how the processor hands rows to its writer --------------------------------


@pytest.mark.parametrize(
    "double",
    [
        lambda: mock.Mock(spec=BatchWriter),
        lambda: mock.MagicMock(spec=BatchWriter),
        lambda: mock.create_autospec(BatchWriter, instance=True),
    ],
    ids=["Mock", "MagicMock", "autospec"],
)
def test_a_test_double_of_the_batch_writer_is_taken_as_a_writer(double: Any) -> None:
    # A mock with spec=BatchWriter passes isinstance(); the processor hands
    # it LogJobRows through its submit(), as to any sink.
    sink = double()
    processor = LogJobSpanProcessor(writer=sink, application_name="odd")
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        provider.get_tracer("t").start_span("j", attributes={attrs.NAME: "j"}).end()
    finally:
        provider.shutdown()
    assert processor.errors == 0


def test_a_submit_replaced_on_the_writer_itself_gets_the_rows(sqlite_backend: Backend) -> None:
    # A submit() set on the instance, as monkeypatch.setattr() does, gets
    # every row, as a subclass's does.
    writer = _writer(sqlite_backend)
    handed: list[Any] = []
    original = writer.submit

    def spy(row: Any) -> bool:
        handed.append(row)
        return original(row)

    writer.submit = spy  # type: ignore[method-assign]
    run_one_job_span(writer)
    assert len(sqlite_backend.rows()) == 3
    assert len(handed) == 3, "the processor went around the writer's submit()"


# -- the memo of finish_rows() --------------------------------------------------


def test_a_float_time_after_an_equal_int_time_reads_as_finished_alone() -> None:
    # 2309725116316704256 and the float 2.3097251163167043e18 are equal, but
    # floor division of the float gives ...703 µs where the int gives ...704
    # (year 2043): one must not take the other's formatted instant.
    as_int = 2309725116316704256
    as_float = float(as_int)
    assert as_float == as_int
    together = [
        pending_row("app", "a", "Enqueued", 1, 1, None, as_int),
        pending_row("app", "b", "Enqueued", 2, 2, None, as_float),
    ]
    alone = [pending_row("app", "b", "Enqueued", 2, 2, None, as_float)]
    finish_rows(together)
    finish_rows(alone)
    assert together[1] == alone[0]


def test_an_int_time_after_an_equal_float_time_reads_as_finished_alone() -> None:
    as_int = 2309725116316704256
    together = [
        pending_row("app", "a", "Enqueued", 1, 1, None, float(as_int)),
        pending_row("app", "b", "Enqueued", 2, 2, None, as_int),
    ]
    alone = [pending_row("app", "b", "Enqueued", 2, 2, None, as_int)]
    finish_rows(together)
    finish_rows(alone)
    assert together[1] == alone[0]
