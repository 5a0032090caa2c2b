"""Retention: the cleanup job that deletes old LogJob rows of one application.

:class:`CleanLogJobWorker` is a :class:`Worker` in full mode, so each cleanup
is itself a traced run whose Succeeded row says how many rows went and up to
which date. A round:

1. takes the application's cleanup lock (see ``_lock``); a cleaner that does
   not get it skips the round and says so;
2. turns the options into passes, one per final state of a run (and per job
   name with a rule of its own): a job-name rule beats a state rule, a state
   rule beats ``delete_days``;
3. runs each pass in batches, each batch two short transactions: select up to
   a batch of old runs through the ``(application_name, state_job,
   create_date)`` index, then delete their rows by ``span_id`` (the unique
   index). Nothing grows with the table: a batch is all that is ever held.

A run's final state is its last row: Succeeded or Failed, else Processing
(still running, or died), else Enqueued. A run is selected by its final row,
so its rows go together, and a failed run kept 30 days keeps all its rows.
Pages move on by ``(create_date, id_log_job)``, so rows a pass keeps are read
once per round, not once per batch. Selecting ids first and deleting by value
also keeps MariaDB, which refuses a DELETE whose subquery reads the same
table, on the same statements as PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _SUPPRESS_KEY
from sqlalchemy import Table, delete, inspect, or_, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import OperationalError

from reec_otel import _rules
from reec_otel._attributes import StateJob
from reec_otel._errors import ConfigurationError
from reec_otel._lock import clean_lock
from reec_otel._schedule import CleanScheduler
from reec_otel._schema import log_job_table
from reec_otel._settings import (
    LogJobOptions,
    default_application_name,
    resolve_database_url,
)
from reec_otel._worker import JobContext, JobResult, Worker
from reec_otel._writer import BatchWriter, create_database_engine

if TYPE_CHECKING:
    from reec_otel._configure import ReecOtel

__all__ = ["CleanLogJobWorker", "CleanReport", "RetentionPass", "plan", "start_clean_scheduler"]

logger = logging.getLogger(__name__)

DEFAULT_NAME_JOB: Final = "CleanLogJobWorker"

# Rows a run has at most: Enqueued, Processing and its final state.
_ROWS_PER_RUN: Final = 3
# Values per IN list, under every backend's parameter limit.
_SPANS_PER_STATEMENT: Final = 500
_RETRIES: Final = 3

_TERMINAL: Final = (StateJob.SUCCEEDED, StateJob.FAILED)
# The states that, present in a run, mean that a row of this state is not its last.
_LATER: Final[Mapping[StateJob, tuple[StateJob, ...]]] = {
    StateJob.SUCCEEDED: (),
    StateJob.FAILED: (),
    StateJob.PROCESSING: _TERMINAL,
    StateJob.ENQUEUED: (StateJob.PROCESSING, *_TERMINAL),
}
_STATE_ORDER: Final = (
    StateJob.SUCCEEDED,
    StateJob.FAILED,
    StateJob.PROCESSING,
    StateJob.ENQUEUED,
)

ProgressFunction = Callable[[int, int | None], None]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetentionPass:
    """Rows of runs whose final state is *state*, dated before *cutoff*.

    Attributes:
        rule: what set the days: ``default``, ``state <State>``, ``job <name>``
            or ``older_than``.
        name: only runs of this job; None for any job.
        excluded_names: runs of these jobs are left to their own rule.
    """

    state: StateJob
    days: int
    cutoff: dt.date
    rule: str
    name: str | None = None
    excluded_names: tuple[str, ...] = ()

    @property
    def cutoff_time(self) -> dt.datetime:
        return dt.datetime.combine(self.cutoff, dt.time(0), dt.UTC)


def plan(
    options: LogJobOptions,
    today: dt.date,
    *,
    older_than_days: int | None = None,
    states: Sequence[StateJob] | None = None,
    names: Sequence[str] | None = None,
) -> list[RetentionPass]:
    """The passes of one round, job-name rules first.

    *older_than_days* replaces every rule for this round; *states* and *names*
    restrict the round to runs with those final states and of those jobs.
    """
    chosen = [s for s in _STATE_ORDER if s in states] if states else list(_STATE_ORDER)

    def days_for(state: StateJob, name: str | None) -> tuple[int, str]:
        if older_than_days is not None:
            return older_than_days, "older_than"
        if name is not None and name in options.delete_days_by_name:
            return options.delete_days_by_name[name], f"job {name}"
        if state in options.delete_days_by_state:
            return options.delete_days_by_state[state], f"state {state.value}"
        return options.delete_days, "default"

    def make(state: StateJob, name: str | None, excluded: tuple[str, ...]) -> RetentionPass:
        days, rule = days_for(state, name)
        cutoff = today - dt.timedelta(days=days)
        return RetentionPass(state, days, cutoff, rule, name, excluded)

    if names:
        return [make(state, name, ()) for name in names for state in chosen]
    ruled = () if older_than_days is not None else tuple(options.delete_days_by_name)
    passes = [make(state, name, ()) for name in ruled for state in chosen]
    return passes + [make(state, None, ruled) for state in chosen]


@dataclasses.dataclass(frozen=True)
class RuleOutcome:
    """Rows one rule took (or would take), and up to which date."""

    days: int
    up_to: dt.date
    rows: int


@dataclasses.dataclass(frozen=True)
class CleanReport:
    """What one cleanup round did.

    Attributes:
        rows: rows deleted; in a dry run, rows that would be.
        skipped: another cleaner held the application's lock; nothing was done.
        interrupted: the round was cancelled (or lost its lock) before its end.
        rules: per rule, its days, the last date it removes, and its rows.
    """

    application_name: str
    table_name: str
    rows: int
    dry_run: bool = False
    skipped: bool = False
    interrupted: bool = False
    rules: Mapping[str, RuleOutcome] = dataclasses.field(default_factory=dict)

    @property
    def message(self) -> str:
        if self.skipped:
            return (
                f"Skipped: another cleaner holds the cleanup lock of application "
                f"{self.application_name!r} on table {self.table_name!r}."
            )
        verb = "Would delete" if self.dry_run else "Deleted"
        parts = [_describe_rule(rule, outcome) for rule, outcome in self.rules.items()]
        text = f"{verb} {self.rows} LogJob rows of application {self.application_name!r}"
        text += f": {'; '.join(parts)}." if parts else "."
        if self.interrupted:
            text += " Stopped before the end; the next round goes on."
        return text

    def as_data(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "rules": {
                rule: {"days": o.days, "up_to": o.up_to.isoformat(), "rows": o.rows}
                for rule, o in self.rules.items()
            },
        }


def _describe_rule(rule: str, outcome: RuleOutcome) -> str:
    what = {"default": "", "older_than": ""}.get(rule)
    if what is None:
        kind, _, value = rule.partition(" ")
        what = f" of {value} runs" if kind == "state" else f" of job {value!r}"
    days = "day" if outcome.days == 1 else "days"
    return f"{outcome.rows}{what} dated up to {outcome.up_to.isoformat()} ({outcome.days} {days})"


class CleanLogJobWorker(Worker):
    """The retention job: deletes this application's old LogJob rows, in batches.

    Runs one round per ``execute()``; hand it to any scheduler (APScheduler,
    Celery beat, cron running a script), or let `configure()` run it on
    ``log_job.clean_cron``. Each round is a traced job in full mode.

    Settings not given here come from the handle `configure()` returned, else
    from the ``REEC_*`` variables, else the defaults.

    Args:
        database_url: the database to clean.
        application_name: whose rows go; never any other application's.
        log_job: table and retention options.
        older_than_days: days for this round, instead of every configured rule.
        states: only runs whose final state is one of these.
        names: only runs of these jobs.
        dry_run: count what would go; delete nothing.
        progress: ``progress(rows_so_far, total)`` after each batch. A round
            with *progress* counts its rows first, so that *total* is known;
            in a dry run, *total* is None.
        handle: the `configure()` handle to take settings from; by default
            the current one.
    """

    def __init__(
        self,
        *,
        database_url: str | URL | None = None,
        application_name: str | None = None,
        log_job: LogJobOptions | None = None,
        older_than_days: int | None = None,
        states: Iterable[StateJob | str] | None = None,
        names: Iterable[str] | None = None,
        dry_run: bool = False,
        progress: ProgressFunction | None = None,
        create_user: str | None = None,
        name_job: str = DEFAULT_NAME_JOB,
        handle: ReecOtel | None = None,
    ) -> None:
        super().__init__(name_job, create_user=create_user)
        self._settings = _resolve(database_url, application_name, log_job, handle)
        self.application_name = self._settings.application_name
        self.log_job = self._settings.options
        self.older_than_days = (
            None
            if older_than_days is None
            else _rules.check_days(older_than_days, "older_than_days")
        )
        self.states = _states(states)
        self.names = _names(names)
        self.dry_run = bool(dry_run)
        self.progress = progress
        self.last_report: CleanReport | None = None
        self._cancelled = threading.Event()

    def __repr__(self) -> str:
        return (
            f"CleanLogJobWorker(application_name={self.application_name!r}, "
            f"table_name={self.log_job.table_name!r}, dry_run={self.dry_run})"
        )

    def cancel(self) -> None:
        """Ask a running round to stop after its current batch."""
        self._cancelled.set()

    async def execute_async(self) -> JobResult:
        """Run one round on a worker thread, so that the event loop is never blocked."""
        try:
            return await asyncio.to_thread(self.execute)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def run_function(self, ctx: JobContext) -> str:
        token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        try:
            report = self._round(ctx)
        finally:
            otel_context.detach(token)
        self.last_report = report
        ctx.data.update(report.as_data())
        level = logging.INFO if report.rows or report.skipped else logging.DEBUG
        logger.log(level, "%s", report.message)
        return report.message

    def _round(self, ctx: JobContext) -> CleanReport:
        settings = self._settings
        engine, owned = settings.engine()
        try:
            table = log_job_table(settings.options.table_name, settings.options.schema)
            if not inspect(engine).has_table(table.name, schema=table.schema):
                return CleanReport(self.application_name, table.name, 0, self.dry_run)
            lock = clean_lock(engine, table, self.application_name)
            if not lock.acquire():
                return CleanReport(self.application_name, table.name, 0, self.dry_run, True)
            try:
                return self._clean(ctx, engine, table, lock.renew)
            finally:
                lock.release()
        finally:
            if owned:
                engine.dispose()

    def _clean(
        self, ctx: JobContext, engine: Engine, table: Table, renew: Callable[[], bool]
    ) -> CleanReport:
        passes = plan(
            self.log_job,
            dt.datetime.now(dt.UTC).date(),
            older_than_days=self.older_than_days,
            states=self.states,
            names=self.names,
        )
        cleaner = _Cleaner(
            engine, table, self.application_name, self.log_job.delete_batch, self._cancelled
        )
        total = None
        if self.progress is not None and not self.dry_run:
            total = sum(cleaner.run_pass(p, dry_run=True) for p in passes)
            self.progress(0, total)
        done = 0
        outcomes: dict[str, RuleOutcome] = {}
        interrupted = False
        for current in passes:
            rows = 0
            for rows_in_batch in cleaner.batches(current, dry_run=self.dry_run):
                rows += rows_in_batch
                done += rows_in_batch
                ctx.data["rows"] = done
                if self.progress is not None:
                    self.progress(done, total)
                if not self.dry_run and not renew():
                    interrupted = True
                    break
            _add(outcomes, current, rows)
            if interrupted or self._cancelled.is_set():
                interrupted = True
                break
        return CleanReport(
            self.application_name, table.name, done, self.dry_run, False, interrupted, outcomes
        )


def _add(outcomes: dict[str, RuleOutcome], current: RetentionPass, rows: int) -> None:
    before = outcomes.get(current.rule)
    up_to = current.cutoff - dt.timedelta(days=1)
    outcomes[current.rule] = RuleOutcome(current.days, up_to, rows + (before.rows if before else 0))


class _Cleaner:
    """The statements of a round, for one table and one application."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        application_name: str,
        batch_rows: int,
        cancelled: threading.Event,
    ) -> None:
        if engine.dialect.name in ("mysql", "mariadb"):
            # Fewer gap locks: a batch then holds back the writer's inserts less.
            engine = engine.execution_options(isolation_level="READ COMMITTED")
        self.engine = engine
        self.table = table
        self.application_name = application_name
        self.runs_per_batch = max(1, batch_rows // _ROWS_PER_RUN)
        self._cancelled = cancelled

    def run_pass(self, current: RetentionPass, *, dry_run: bool) -> int:
        return sum(self.batches(current, dry_run=dry_run))

    def batches(self, current: RetentionPass, *, dry_run: bool) -> Iterator[int]:
        """Rows deleted (or counted) batch by batch, until the pass is done or cancelled."""
        after: tuple[dt.datetime, int] | None = None
        later = _LATER[current.state]
        while not self._cancelled.is_set():
            runs = self._retry(self._select_runs, current, after)
            if not runs:
                return
            spans = [span_id for span_id, _, _ in runs]
            if later:
                spans = self._retry(self._without_later_rows, spans, later)
            if spans:
                remove = self._count if dry_run else self._delete
                yield self._retry(remove, spans, current.cutoff)
            if len(runs) < self.runs_per_batch:
                return
            _, last_date, last_id = runs[-1]
            after = (last_date, last_id)

    def _select_runs(
        self, current: RetentionPass, after: tuple[dt.datetime, int] | None
    ) -> list[tuple[str, dt.datetime, int]]:
        """The next page of rows in *current*'s state, oldest first, as (span, date, id)."""
        t = self.table
        query = select(t.c.span_id, t.c.create_date, t.c.id_log_job).where(
            t.c.application_name == self.application_name,
            t.c.state_job == current.state.value,
            t.c.create_date < current.cutoff_time,
        )
        if current.name is not None:
            query = query.where(t.c.name_job == current.name)
        if current.excluded_names:
            query = query.where(t.c.name_job.not_in(current.excluded_names))
        if after is not None:
            last_date, last_id = after
            query = query.where(
                t.c.create_date >= last_date,
                or_(t.c.create_date > last_date, t.c.id_log_job > last_id),
            )
        query = query.order_by(t.c.create_date, t.c.id_log_job).limit(self.runs_per_batch)
        with self.engine.connect() as connection:
            return [(row[0], row[1], row[2]) for row in connection.execute(query)]

    def _without_later_rows(self, spans: list[str], later: tuple[StateJob, ...]) -> list[str]:
        """The runs of *spans* that reached none of the *later* states: their row is the last.

        Looked up by value through the (span_id, state_job) unique index: as a
        NOT EXISTS subquery, MariaDB would read the whole index each batch.
        """
        t = self.table
        found: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(spans), _SPANS_PER_STATEMENT):
                chunk = spans[start : start + _SPANS_PER_STATEMENT]
                query = select(t.c.span_id).where(
                    t.c.span_id.in_(chunk), t.c.state_job.in_([s.value for s in later])
                )
                found.update(connection.execute(query).scalars())
        return [span for span in spans if span not in found]

    def _row_ids(self, spans: Sequence[str], cutoff: dt.date) -> list[int]:
        """Ids of this application's rows of *spans* dated before *cutoff*.

        The WHERE clause names span_id alone, so that every planner looks the
        rows up by the unique index; the other conditions are checked here.
        """
        t = self.table
        ids: list[int] = []
        with self.engine.connect() as connection:
            for start in range(0, len(spans), _SPANS_PER_STATEMENT):
                chunk = spans[start : start + _SPANS_PER_STATEMENT]
                query = select(t.c.id_log_job, t.c.application_name, t.c.create_date_only)
                for row_id, application, day in connection.execute(
                    query.where(t.c.span_id.in_(chunk))
                ):
                    if application == self.application_name and day < cutoff:
                        ids.append(row_id)
        return ids

    def _count(self, spans: Sequence[str], cutoff: dt.date) -> int:
        return len(self._row_ids(spans, cutoff))

    def _delete(self, spans: Sequence[str], cutoff: dt.date) -> int:
        ids = self._row_ids(spans, cutoff)
        t = self.table
        deleted = 0
        with self.engine.begin() as connection:
            for start in range(0, len(ids), _SPANS_PER_STATEMENT):
                chunk = ids[start : start + _SPANS_PER_STATEMENT]
                statement = delete(t).where(
                    t.c.id_log_job.in_(chunk), t.c.application_name == self.application_name
                )
                deleted += connection.execute(statement).rowcount
        return deleted

    def _retry(self, attempt: Callable[..., T], *args: Any) -> T:
        # A deadlock victim or a busy SQLite file: the batch is short, try again.
        for number in range(1, _RETRIES + 1):
            try:
                return attempt(*args)
            except OperationalError:
                if number == _RETRIES or self._cancelled.is_set():
                    raise
                logger.debug("LogJob cleanup batch failed; retrying.", exc_info=True)
                time.sleep(0.2 * 2**number)
        raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Where a round cleans: the database, the application, the options."""

    url: URL
    application_name: str
    options: LogJobOptions
    shared_engine: Engine | None

    def engine(self) -> tuple[Engine, bool]:
        """The engine to use, and whether the round made it (and must dispose of it)."""
        if self.shared_engine is not None:
            return self.shared_engine, False
        return create_database_engine(self.url), True


def _resolve(
    database_url: str | URL | None,
    application_name: str | None,
    log_job: LogJobOptions | None,
    handle: ReecOtel | None,
) -> _Settings:
    if handle is None:
        # Imported here: configure() starts the scheduler of this module.
        from reec_otel._configure import current

        handle = current()
    env = os.environ
    options = log_job or _handle_options(handle) or LogJobOptions.from_environment(env)
    if not isinstance(options, LogJobOptions):
        raise ConfigurationError(f"log_job must be a LogJobOptions; got {options!r}.")
    shared = None
    if database_url is None and handle is not None and handle.database_url is not None:
        url = handle.database_url
        writer = handle.processor.writer if handle.processor is not None else None
        if isinstance(writer, BatchWriter):
            # The writer's engine: an in-memory SQLite database is only there.
            # TODO: such a database has one connection, which the round then shares
            # with the writer's thread; a lock around that connection would keep
            # their transactions apart.
            shared = writer.engine
    else:
        url = resolve_database_url(database_url, env)
    name = application_name
    if name is None:
        name = handle.application_name if handle is not None else default_application_name(env)
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ConfigurationError(
            f"application_name must be a non-empty string of at most 255 characters; got {name!r}."
        )
    return _Settings(url, name, options, shared)


def _handle_options(handle: ReecOtel | None) -> LogJobOptions | None:
    return getattr(handle, "log_job", None) if handle is not None else None


def _states(states: Iterable[StateJob | str] | None) -> tuple[StateJob, ...] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    rules = _rules.state_rules({state: 0 for state in states}, "states")
    return tuple(rules) or None


def _names(names: Iterable[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    return tuple(_rules.name_rules({name: 0 for name in names}, "names")) or None


def start_clean_scheduler(handle: ReecOtel) -> CleanScheduler | None:
    """Start the cleanup scheduler of a handle that writes rows and has cleaning on."""
    options = _handle_options(handle)
    if options is None or not options.enable_clean or not handle.writes_rows:
        return None

    def make_round() -> CleanLogJobWorker:
        return CleanLogJobWorker(handle=handle)

    scheduler = CleanScheduler(make_round, options.clean_cron, options.clean_time_zone)
    scheduler.start()
    return scheduler
