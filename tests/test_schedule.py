"""The cleanup schedule: cron times in a time zone, the scheduler thread, configure()."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from retention_data import load, make_run

import reec_otel
from reec_otel import CleanLogJobWorker, LifecycleError, LogJobOptions, StateJob, log_job_table
from reec_otel._schedule import CleanScheduler, next_fire_time


def _utc(*fields: int) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("time_zone", "after", "expected"),
    [
        ("UTC", _utc(2026, 1, 10, 1, 0), _utc(2026, 1, 10, 2, 0)),
        ("UTC", _utc(2026, 1, 10, 2, 0), _utc(2026, 1, 11, 2, 0)),
        ("Europe/Madrid", _utc(2026, 1, 10, 0, 0), _utc(2026, 1, 10, 1, 0)),
        ("Europe/Madrid", _utc(2026, 7, 10, 0, 30), _utc(2026, 7, 11, 0, 0)),
        ("America/Lima", _utc(2026, 1, 10, 0, 0), _utc(2026, 1, 10, 7, 0)),
    ],
)
def test_the_next_round_is_at_the_cron_time_of_the_time_zone(time_zone, after, expected):
    assert next_fire_time("0 2 * * *", time_zone, after) == expected


class _Clock:
    """A wall clock that starts at *start* and runs at the real pace."""

    def __init__(self, start: dt.datetime) -> None:
        self._start = start
        self._origin = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=time.monotonic() - self._origin)


class _Round:
    """A round that records when it ran and, if asked, runs until cancelled."""

    def __init__(self, clock, *, until_cancelled: bool = False) -> None:
        self.clock = clock
        self.until_cancelled = until_cancelled
        self.ran_at: list[dt.datetime] = []
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def execute(self) -> None:
        self.ran_at.append(self.clock())
        self.started.set()
        if self.until_cancelled:
            self.cancelled.wait(60)

    def cancel(self) -> None:
        self.cancelled.set()


def test_the_scheduler_runs_a_round_when_the_cron_time_comes():
    clock = _Clock(_utc(2026, 1, 10, 1, 59, 59, 500_000))
    round_ = _Round(clock)
    scheduler = CleanScheduler(lambda: round_, "0 2 * * *", clock=clock)

    scheduler.start()
    try:
        assert round_.started.wait(30)
    finally:
        assert scheduler.stop(10_000)

    assert len(round_.ran_at) == 1
    assert round_.ran_at[0] >= _utc(2026, 1, 10, 2, 0)
    assert not scheduler.running


def test_stop_interrupts_a_running_round_within_its_deadline():
    clock = _Clock(_utc(2026, 1, 10, 1, 59, 59, 800_000))
    round_ = _Round(clock, until_cancelled=True)
    scheduler = CleanScheduler(lambda: round_, "0 2 * * *", clock=clock)
    scheduler.start()
    assert round_.started.wait(30)

    assert scheduler.stop(10_000)
    assert round_.cancelled.is_set()
    assert scheduler.stop(10_000)  # idempotent


def test_a_scheduler_starts_only_once():
    scheduler = CleanScheduler(lambda: _Round(None), "0 2 * * *")
    scheduler.start()
    try:
        with pytest.raises(LifecycleError):
            scheduler.start()
    finally:
        scheduler.stop()
    with pytest.raises(LifecycleError):
        scheduler.start()


def test_a_scheduled_round_cleans_the_database_and_records_its_run(backend, tracing):
    table = log_job_table(backend.table_name)
    table.create(backend.engine)
    old, recent = (
        make_run("billing", "sync", StateJob.SUCCEEDED, 20),
        make_run("billing", "sync", StateJob.SUCCEEDED, 1),
    )
    load(backend.engine, table, [old, recent])
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="billing",
        log_job=LogJobOptions(table_name=backend.table_name, enable_clean=False),
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    rounds: list[CleanLogJobWorker] = []

    def make_round() -> CleanLogJobWorker:
        rounds.append(CleanLogJobWorker(handle=handle))
        return rounds[-1]

    clock = _Clock(_utc(2026, 1, 10, 1, 59, 59, 500_000))
    scheduler = CleanScheduler(make_round, "0 2 * * *", clock=clock)
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while scheduler.rounds_run == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert scheduler.stop(10_000)
        assert handle.force_flush(10_000)
        handle.shutdown()

    assert rounds[0].last_report.rows == 3
    assert {r["span_id"] for r in backend.rows(name_job="sync")} == {recent.span_id}
    (succeeded,) = backend.rows(name_job="CleanLogJobWorker", state_job="Succeeded")
    assert succeeded["message"].startswith("Deleted 3 LogJob rows of application 'billing'")


def test_configure_starts_the_scheduler_and_shutdown_stops_it(sqlite_backend, tracing):
    handle = reec_otel.configure(
        database_url=sqlite_backend.url,
        application_name="billing",
        log_job=LogJobOptions(clean_cron="15 4 * * *", clean_time_zone="Europe/Madrid"),
        tracer_provider=tracing.provider,
    )
    scheduler = handle.clean_scheduler
    try:
        assert scheduler is not None and scheduler.running
        assert (scheduler.cron, scheduler.time_zone) == ("15 4 * * *", "Europe/Madrid")
    finally:
        assert handle.shutdown(10_000)
    assert not scheduler.running


@pytest.mark.parametrize(
    "settings",
    [
        {"log_job": LogJobOptions(enable_clean=False)},
        {"log_job": LogJobOptions(is_save_db=False)},
        {"enable_global_db_save": False},
    ],
    ids=["enable_clean off", "is_save_db off", "global saving off"],
)
def test_configure_starts_no_scheduler_when_cleaning_is_off_or_no_rows_are_written(
    sqlite_backend, tracing, settings
):
    handle = reec_otel.configure(
        database_url=sqlite_backend.url,
        application_name="billing",
        tracer_provider=tracing.provider,
        **settings,
    )
    try:
        assert handle.clean_scheduler is None
    finally:
        handle.shutdown(10_000)


def test_configure_reads_the_schedule_from_the_environment(sqlite_backend, tracing, monkeypatch):
    monkeypatch.setenv("REEC_LOG_JOB_CLEAN_CRON", "0 3 * * 0")
    monkeypatch.setenv("REEC_LOG_JOB_CLEAN_TIME_ZONE", "Asia/Tokyo")
    handle = reec_otel.configure(
        database_url=sqlite_backend.url,
        application_name="billing",
        tracer_provider=tracing.provider,
    )
    try:
        assert handle.clean_scheduler.cron == "0 3 * * 0"
        assert handle.clean_scheduler.time_zone == "Asia/Tokyo"
    finally:
        handle.shutdown(10_000)
