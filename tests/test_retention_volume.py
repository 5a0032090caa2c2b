"""Retention at volume: 200 000 rows of two applications, cleaned beside a live writer."""

from __future__ import annotations

import collections
import datetime as dt
import threading

from retention_data import STATES_OF_FINAL, kept_rows, load, make_runs, row_count
from sqlalchemy import func, select

import reec_otel
from reec_otel import CleanLogJobWorker, LogJobOptions, StateJob, Worker, log_job_table

RULES = {
    "default_days": 10,
    "by_state": {StateJob.FAILED: 30, StateJob.SUCCEEDED: 3},
    "by_name": {"noisy-poller": 1},
}


def test_cleaning_one_application_beside_a_live_writer_keeps_rules_runs_and_the_other_app(
    backend, tracing
):
    today = dt.datetime.now(dt.UTC).date()
    billing = make_runs("billing", 100_000, today, seed=11)
    shipping = make_runs("shipping", 100_000, today, seed=12)
    table = log_job_table(backend.table_name)
    table.create(backend.engine)
    load(backend.engine, table, billing + shipping)
    options = LogJobOptions(
        table_name=backend.table_name,
        enable_clean=False,
        delete_days=RULES["default_days"],
        delete_days_by_state=RULES["by_state"],
        delete_days_by_name=RULES["by_name"],
    )
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="billing",
        log_job=options,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    try:
        live = _LiveJobs()
        live.start()
        live.started.wait(30)
        cleaner = CleanLogJobWorker()
        result = cleaner.execute()
        live.stop()
        assert handle.force_flush(30_000)
    finally:
        handle.shutdown()

    assert result.state is StateJob.SUCCEEDED, result.exception
    report = cleaner.last_report
    # The day the cleaner counted from, should midnight have passed meanwhile.
    cleaner_today = report.rules["default"].up_to + dt.timedelta(days=1 + RULES["default_days"])
    expected_kept = kept_rows(
        billing,
        cleaner_today,
        default_days=RULES["default_days"],
        by_state=RULES["by_state"],
        by_name=RULES["by_name"],
    )
    assert report.rows == row_count(billing) - expected_kept > 0

    history = _rows_per_span(backend, table, "billing", exclude=("live", "CleanLogJobWorker"))
    assert history == _expected_rows_per_span(billing, cleaner_today)
    assert _count(backend, table, "shipping") == row_count(shipping)
    assert live.runs > 0
    assert _count(backend, table, "billing", name_job="live") == 3 * live.runs

    cleanup_rows = backend.rows(name_job="CleanLogJobWorker", state_job="Succeeded")
    assert len(cleanup_rows) == 1
    message = cleanup_rows[0]["message"]
    assert f"Deleted {report.rows} LogJob rows of application 'billing'" in message
    assert f"up to {report.rules['default'].up_to.isoformat()}" in message
    assert cleanup_rows[0]["data"]["rows"] == report.rows


class _LiveJobs(threading.Thread):
    """Runs a job every few milliseconds until stopped, as a busy application would."""

    def __init__(self) -> None:
        super().__init__(name="live-jobs", daemon=True)
        self.runs = 0
        self.started = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.005):
            Worker("live", run_function=lambda ctx: "ok").execute()
            self.runs += 1
            self.started.set()

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)


def _count(backend, table, application_name, **where) -> int:
    query = select(func.count()).select_from(table)
    query = query.where(table.c.application_name == application_name)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with backend.engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _rows_per_span(backend, table, application_name, exclude) -> dict[str, int]:
    query = (
        select(table.c.span_id, func.count())
        .where(table.c.application_name == application_name)
        .where(table.c.name_job.not_in(exclude))
        .group_by(table.c.span_id)
    )
    with backend.engine.connect() as connection:
        return dict(connection.execute(query).all())


def _expected_rows_per_span(runs, today) -> dict[str, int]:
    kept: dict[str, int] = collections.Counter()
    for run in runs:
        days = RULES["by_name"].get(
            run.name_job, RULES["by_state"].get(run.final, RULES["default_days"])
        )
        if not run.final_date < today - dt.timedelta(days=days):
            kept[run.span_id] = len(STATES_OF_FINAL[run.final])
    return dict(kept)
