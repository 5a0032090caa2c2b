"""Synthetic LogJob history for the retention tests, loaded fast.

Runs are made from a seeded random generator: a job name, a final state and an
age in days; each run has the rows a real one would have (Enqueued,
Processing, then its final state, fewer when it never finished). The expected
outcome of a cleanup is computed here, in Python, from the same runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine

from reec_otel import StateJob

NAMES = ("sync-invoices", "nightly-report", "noisy-poller")
STATES_OF_FINAL = {
    StateJob.SUCCEEDED: (StateJob.ENQUEUED, StateJob.PROCESSING, StateJob.SUCCEEDED),
    StateJob.FAILED: (StateJob.ENQUEUED, StateJob.PROCESSING, StateJob.FAILED),
    StateJob.PROCESSING: (StateJob.ENQUEUED, StateJob.PROCESSING),
    StateJob.ENQUEUED: (StateJob.ENQUEUED,),
}
_FINAL_WEIGHTS = {
    StateJob.SUCCEEDED: 75,
    StateJob.FAILED: 15,
    StateJob.PROCESSING: 6,
    StateJob.ENQUEUED: 4,
}
COLUMNS = (
    "application_name",
    "name_job",
    "state_job",
    "trace_identifier",
    "span_id",
    "create_date",
    "create_date_only",
)


@dataclasses.dataclass(frozen=True)
class Run:
    application_name: str
    name_job: str
    final: StateJob
    span_id: str
    trace_identifier: str
    started: dt.datetime
    ended: dt.datetime

    @property
    def final_date(self) -> dt.date:
        return self.ended.date()

    def rows(self) -> Iterator[tuple[Any, ...]]:
        for state in STATES_OF_FINAL[self.final]:
            # The final row is the run's last; the others are written when it starts.
            when = self.ended if state is self.final else self.started
            yield (
                self.application_name,
                self.name_job,
                state.value,
                self.trace_identifier,
                self.span_id,
                when,
                when.date(),
            )


def make_runs(
    application_name: str, rows: int, today: dt.date, *, seed: int, max_age_days: int = 44
) -> list[Run]:
    """Runs of one application adding up to about *rows* rows, aged 0 to *max_age_days*."""
    rng = random.Random(seed)
    finals = list(_FINAL_WEIGHTS)
    weights = list(_FINAL_WEIGHTS.values())
    midnight = dt.datetime.combine(today, dt.time(0), dt.UTC)
    runs: list[Run] = []
    total = 0
    while total < rows:
        final = rng.choices(finals, weights)[0]
        age = rng.randint(0, max_age_days)
        # Some runs start before midnight and end after it: their rows span two dates.
        ended = midnight - dt.timedelta(days=age) + dt.timedelta(seconds=rng.randint(0, 7_200))
        started = ended - dt.timedelta(seconds=rng.choice((1, 3_600, 5_400)))
        runs.append(
            Run(
                application_name,
                rng.choice(NAMES),
                final,
                f"{rng.getrandbits(64):016x}",
                f"{rng.getrandbits(128):032x}",
                started,
                ended,
            )
        )
        total += len(STATES_OF_FINAL[final])
    return runs


def row_count(runs: Sequence[Run]) -> int:
    return sum(len(STATES_OF_FINAL[run.final]) for run in runs)


def kept_rows(
    runs: Sequence[Run],
    today: dt.date,
    *,
    default_days: int,
    by_state: Mapping[StateJob, int] | None = None,
    by_name: Mapping[str, int] | None = None,
) -> int:
    """Rows left after a cleanup with these rules: a run goes when its final row is old."""
    by_state = by_state or {}
    by_name = by_name or {}
    kept = 0
    for run in runs:
        days = by_name.get(run.name_job, by_state.get(run.final, default_days))
        if not run.final_date < today - dt.timedelta(days=days):
            kept += len(STATES_OF_FINAL[run.final])
    return kept


def load(engine: Engine, table: Table, runs: Sequence[Run], chunk_rows: int = 20_000) -> None:
    """Insert the runs' rows in big chunks: COPY on PostgreSQL, executemany elsewhere.

    Values go to the driver as the LogJob column types store them (UTC wall
    time), without SQLAlchemy's per-value processing, which would dominate.
    """
    if engine.dialect.name == "postgresql":
        _copy(engine, table, runs)
    else:
        _insert(engine, table, runs, chunk_rows)
    # A production table has planner statistics (autovacuum, InnoDB's own
    # sampling); a table loaded a moment ago has none yet.
    statement = "ANALYZE TABLE" if engine.dialect.name in ("mysql", "mariadb") else "ANALYZE"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"{statement} {_qualified(table)}")


def _insert(engine: Engine, table: Table, runs: Sequence[Run], chunk_rows: int) -> None:
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    statement = (
        f"INSERT INTO {_qualified(table)} ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join([marker] * len(COLUMNS))})"
    )
    as_text = engine.dialect.name == "sqlite"
    chunk: list[tuple[Any, ...]] = []
    with engine.begin() as connection:
        for run in runs:
            chunk.extend(_driver_row(row, as_text) for row in run.rows())
            if len(chunk) >= chunk_rows:
                connection.exec_driver_sql(statement, chunk)
                chunk = []
        if chunk:
            connection.exec_driver_sql(statement, chunk)


def _driver_row(row: tuple[Any, ...], as_text: bool) -> tuple[Any, ...]:
    when = row[5].astimezone(dt.UTC).replace(tzinfo=None)
    if as_text:
        # SQLAlchemy's SQLite storage format, so that comparisons with bound values hold.
        return (*row[:5], when.strftime("%Y-%m-%d %H:%M:%S.%f"), row[6].isoformat())
    return (*row[:5], when, row[6])


def _qualified(table: Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


def _copy(engine: Engine, table: Table, runs: Sequence[Run]) -> None:
    buffer = io.StringIO()
    for run in runs:
        for row in run.rows():
            fields = [*row[:5], row[5].isoformat(), row[6].isoformat()]
            buffer.write("\t".join(fields) + "\n")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {_qualified(table)} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            copy.write(buffer.getvalue())
        raw.commit()
    finally:
        raw.close()


def make_run(
    application_name: str,
    name_job: str,
    final: StateJob,
    days_ago: int,
    *,
    started_days_ago: int | None = None,
    today: dt.date | None = None,
) -> Run:
    """One run whose final row is *days_ago* days old (at noon UTC)."""
    today = today or dt.datetime.now(dt.UTC).date()
    noon = dt.datetime.combine(today, dt.time(12), dt.UTC)
    ended = noon - dt.timedelta(days=days_ago)
    started = ended if started_days_ago is None else noon - dt.timedelta(days=started_days_ago)
    return Run(
        application_name,
        name_job,
        final,
        f"{random.getrandbits(64):016x}",
        f"{random.getrandbits(128):032x}",
        started,
        ended,
    )
