"""The background writer: a bounded queue of rows, batched into the database.

It knows the database and rows, nothing of spans or jobs. ``submit()`` is the
only call made on an application's thread and does no I/O: it appends to a
queue. One daemon thread takes batches from the queue and inserts each as
multi-row statements in one transaction, idempotently on (span_id, state_job),
with instrumentation suppressed so that its statements make no spans.

When the database is unreachable, rows stay queued (up to the bound) and the
batch is retried with backoff; a row the database rejects is set aside and
reported, the rest of its batch is written. Rows beyond the bound are dropped,
counted and reported. After ``os.fork()`` the child starts empty, with its
own lock, thread and connections.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import operator
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context

# The API's own key for "instrumentation off in this context"; the SDK's
# exporters set it the same way.
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _SUPPRESS_KEY
from sqlalchemy import Dialect, Table, event, inspect
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import Insert

from reec_otel._diagnostics import RateLimitedLog
from reec_otel._errors import ConfigurationError

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]

DEFAULT_MAX_QUEUE_ROWS: Final = 100_000
DEFAULT_BATCH_ROWS: Final = 1_000
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 0.5
DEFAULT_TIMEOUT_MILLIS: Final = 30_000
_MAX_BACKOFF_SECONDS: Final = 5.0
_CONNECT_TIMEOUT_SECONDS: Final = 5


class WriterState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    SHUT_DOWN = "shut down"


@dataclasses.dataclass(frozen=True)
class WriterStatistics:
    """Counters of a writer since it was created (or since fork, in a child)."""

    rows_written: int
    rows_queued: int
    rows_dropped: int
    rows_rejected: int
    write_failures: int
    last_error: str | None


def create_database_engine(url: str | URL) -> Engine:
    """An engine for the writer: short connect timeouts, SQLite in WAL mode.

    Connects to nothing: the first connection is made by the writer's thread.
    """
    url = make_url(url)
    backend = url.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if url.database in (None, "", ":memory:"):
            options["poolclass"] = StaticPool
    elif backend == "postgresql" or backend in ("mysql", "mariadb"):
        options["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_SECONDS}
    try:
        engine = create_engine(url, **options)
    except (ImportError, SQLAlchemyError) as exc:
        raise ConfigurationError(
            f"Cannot create a database engine for {url.render_as_string(hide_password=True)}: "
            f"{exc}. Is the driver installed (pip install 'reec-otel[postgres]' or "
            "'reec-otel[mysql]')?"
        ) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers work while the writer writes; the busy timeout makes a
    # locked database wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


class BatchWriter:
    """Writes rows to one table in batches, from one background thread.

    Args:
        engine: where to write; the writer disposes of it at shutdown.
        table: the table the rows belong to; created when first connected.
        max_queue_rows: rows held in memory at most; more are dropped and counted.
        batch_rows: rows per transaction at most.
        flush_interval_seconds: how long a row may wait for its batch to fill.
    """

    def __init__(
        self,
        engine: Engine,
        table: Table,
        *,
        max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
    ) -> None:
        _require_positive("max_queue_rows", max_queue_rows)
        _require_positive("batch_rows", batch_rows)
        _require_positive("flush_interval_seconds", flush_interval_seconds)
        self.engine = engine
        self.table = table
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.flush_interval_seconds = flush_interval_seconds
        self._insert = _idempotent_insert(table, engine.dialect.name)
        self._prepared = _PreparedInserts(self._insert, table, engine.dialect)
        self._warnings = RateLimitedLog(logger)
        self._reset_runtime_state()
        self.state = WriterState.CREATED
        _register_fork_handler(self)

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Row] = deque()
        self._thread: threading.Thread | None = None
        self._accepted = 0  # rows ever queued
        self._settled = 0  # rows that left the queue for good: written or rejected
        self._written = 0
        self._dropped = 0
        self._rejected = 0
        self._failures = 0
        self._last_error: str | None = None
        self._flush_waiters = 0
        self._stopping = False
        self._stop_deadline = float("inf")
        self._table_ready = False

    # -- called by applications' threads ------------------------------------

    def submit(self, row: Row) -> bool:
        """Queue one row; never blocks on I/O. False if the row was dropped."""
        with self._lock:
            if self._stopping or len(self._queue) >= self.max_queue_rows:
                self._dropped += 1
                reason = "is shut down" if self._stopping else "queue is full"
                dropped = self._dropped
            else:
                self._queue.append(row)
                self._accepted += 1
                if self._thread is None:
                    self._start_thread()
                if len(self._queue) in (1, self.batch_rows):
                    self._wake.notify()
                return True
        self._warnings.log(
            logging.WARNING,
            "drop",
            "LogJob writer %s: a row was dropped (%d dropped in all).",
            reason,
            dropped,
        )
        return False

    def force_flush(self, timeout_millis: int = DEFAULT_TIMEOUT_MILLIS) -> bool:
        """Write every row queued before this call; True if done in time."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            target = self._accepted
            if self._settled >= target:
                return True
            self._flush_waiters += 1
            self._wake.notify_all()
            try:
                while self._settled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._thread is None:
                        return False
                    self._wake.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def shutdown(self, timeout_millis: int = DEFAULT_TIMEOUT_MILLIS) -> bool:
        """Write what is queued, stop the thread, close connections.

        Idempotent. Returns True when everything queued was written within the
        deadline; rows still queued at the deadline are counted as dropped.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            if self.state is WriterState.SHUT_DOWN:
                return not self._queue
            self.state = WriterState.SHUT_DOWN
            self._stopping = True
            self._stop_deadline = deadline
            thread = self._thread
            self._wake.notify_all()
        if thread is not None:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            finished = (thread is None or not thread.is_alive()) and not self._queue
            unwritten = len(self._queue)
        if unwritten:
            logger.warning(
                "LogJob writer shut down with %d rows unwritten (database unreachable?).",
                unwritten,
            )
        if thread is None or not thread.is_alive():
            self.engine.dispose()
        return finished

    def statistics(self) -> WriterStatistics:
        with self._lock:
            return WriterStatistics(
                rows_written=self._written,
                # Queued or being written: accepted and not yet settled.
                rows_queued=self._accepted - self._settled,
                rows_dropped=self._dropped,
                rows_rejected=self._rejected,
                write_failures=self._failures,
                last_error=self._last_error,
            )

    # -- the writer's thread -------------------------------------------------

    def _start_thread(self) -> None:
        self.state = WriterState.RUNNING
        self._thread = threading.Thread(target=self._run, name="reec-otel-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The writer's own statements must not become spans (or rows).
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        backoff = 0.0
        while True:
            batch = self._next_batch(backoff)
            if batch is None:
                return
            remaining = self._write(batch)
            if not remaining:
                backoff = 0.0
                continue
            backoff = min(max(backoff * 2, 0.1), _MAX_BACKOFF_SECONDS)
            with self._lock:
                self._queue.extendleft(reversed(remaining))

    def _next_batch(self, backoff: float) -> list[Row] | None:
        with self._lock:
            if backoff:
                self._wake.wait(backoff)
            waited_since = time.monotonic()
            while True:
                if self._stopping and (not self._queue or time.monotonic() >= self._stop_deadline):
                    return None
                if self._queue and self._batch_due(waited_since):
                    break
                timeout = None
                if self._queue:
                    timeout = self.flush_interval_seconds - (time.monotonic() - waited_since)
                self._wake.wait(timeout)
            take = min(self.batch_rows, len(self._queue))
            return [self._queue.popleft() for _ in range(take)]

    def _batch_due(self, waited_since: float) -> bool:
        return (
            len(self._queue) >= self.batch_rows
            or self._flush_waiters > 0
            or self._stopping
            or time.monotonic() - waited_since >= self.flush_interval_seconds
        )

    def _write(self, batch: list[Row]) -> list[Row]:
        """Insert *batch*; returns the rows to try again later (the database is away)."""
        try:
            self._ensure_table()
            with self.engine.begin() as connection:
                self._insert_rows(connection, batch)
        except Exception as exc:  # the writer's thread must not die
            if _is_outage(exc):
                self._note_failure(exc, len(batch))
                return batch
            # Something in the batch is refused: find out which rows, one by one.
            return self._write_one_by_one(batch)
        self._settle(len(batch), rejected=0)
        logger.debug("LogJob writer wrote %d rows.", len(batch))
        return []

    def _write_one_by_one(self, batch: list[Row]) -> list[Row]:
        for index, row in enumerate(batch):
            try:
                with self.engine.begin() as connection:
                    self._insert_rows(connection, [row])
            except Exception as exc:
                if _is_outage(exc):
                    self._note_failure(exc, len(batch) - index)
                    return batch[index:]
                self._reject(row, exc)
                self._settle(0, rejected=1)
            else:
                self._settle(1, rejected=0)
        return []

    def _insert_rows(self, connection: Connection, rows: Sequence[Row]) -> None:
        prepared = self._prepared.get(rows)
        if prepared is None:
            connection.execute(self._insert, list(rows))
        else:
            prepared.execute(connection, rows)

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        try:
            self.table.create(self.engine, checkfirst=True)
        except SQLAlchemyError:
            # Another process may have created it between the check and ours.
            if not inspect(self.engine).has_table(self.table.name, schema=self.table.schema):
                raise
        self._table_ready = True

    def _settle(self, written: int, *, rejected: int) -> None:
        with self._lock:
            self._written += written
            self._rejected += rejected
            self._settled += written + rejected
            self._wake.notify_all()

    def _note_failure(self, exc: Exception, waiting: int) -> None:
        self._table_ready = False
        message = _describe(exc)
        with self._lock:
            self._failures += 1
            self._last_error = message
        self._warnings.log(
            logging.WARNING,
            "unreachable",
            "LogJob writer cannot reach the database; %d rows wait and will be retried: %s",
            waiting,
            message,
        )

    def _reject(self, row: Row, exc: Exception) -> None:
        message = _describe(exc)
        with self._lock:
            self._last_error = message
        self._warnings.log(
            logging.WARNING,
            "reject",
            "LogJob writer set aside a row the database refused (job %r, state %r): %s",
            row.get("name_job"),
            row.get("state_job"),
            message,
        )

    def _after_fork_in_child(self) -> None:
        # The parent's queued rows are the parent's to write; its lock may have
        # been held at the fork and its pooled connections are not ours.
        self._reset_runtime_state()
        self.engine.dispose(close=False)
        if self.state is WriterState.RUNNING:
            self.state = WriterState.CREATED


def _register_fork_handler(writer: BatchWriter) -> None:
    if not hasattr(os, "register_at_fork"):
        return
    reference = weakref.WeakMethod(writer._after_fork_in_child)

    def after_in_child() -> None:
        handler = reference()
        if handler is not None:
            handler()

    os.register_at_fork(after_in_child=after_in_child)


def _idempotent_insert(table: Table, dialect: str) -> Insert:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["span_id", "state_job"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["span_id", "state_job"])
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        # A no-op update rather than INSERT IGNORE, which would also turn real
        # errors (bad values) into silent warnings.
        statement = mysql_insert(table)
        return statement.on_duplicate_key_update(span_id=statement.inserted.span_id)
    raise ConfigurationError(
        f"The {dialect!r} database is not supported; use SQLite, PostgreSQL or MariaDB/MySQL."
    )


# Drivers of the "pyformat" style that take "format" (%s) parameters as well.
_FORMAT_TOO: Final = frozenset({"psycopg", "psycopg2", "pymysql", "mysqldb"})
_NAMED_PARAMETER: Final = re.compile(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s")


class _PreparedInsert:
    """The idempotent INSERT for one set of columns, compiled once, run as executemany.

    Rows go to the driver as plain parameter lists converted by the columns'
    own bind processors: the same values SQLAlchemy would send, without
    building its per-row parameter structures for every batch.
    """

    def __init__(self, statement: Insert, table: Table, dialect: Dialect, keys: tuple[str, ...]):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        self.named = not compiled.positional
        if compiled.positional:
            names = tuple(compiled.positiontup or ())
        elif dialect.driver in _FORMAT_TOO and compiled.string.count("%(") == len(compiled.binds):
            # Positional parameters spare these drivers a dict per row.
            names = tuple(_NAMED_PARAMETER.findall(compiled.string))
            self.sql = _NAMED_PARAMETER.sub("%s", compiled.string)
            self.named = False
        else:
            names = tuple(compiled.binds)
        if sorted(names) != sorted(keys):
            raise _NotPreparable(names)
        self.keys = names
        self.pick = operator.itemgetter(*names) if len(names) > 1 else _one_item(names[0])
        self.values_clause = (
            _values_clause(self.sql, len(names)) if dialect.name == "sqlite" else None
        )
        self.rows_per_statement = _rows_per_statement(dialect.name, len(names))
        self.converters = [
            (index, processor)
            for index, key in enumerate(names)
            if (processor := table.columns[key].type.dialect_impl(dialect).bind_processor(dialect))
        ]

    def execute(self, connection: Connection, rows: Sequence[Row]) -> None:
        if self.values_clause is None:
            connection.exec_driver_sql(self.sql, self._parameters(rows))
        else:
            self._execute_multi_row(connection, self._parameters(rows), self.values_clause)

    def _parameters(self, rows: Sequence[Row]) -> list[Any]:
        keys = self.keys
        pick = self.pick
        converters = self.converters
        parameters: list[Any] = []
        for row in rows:
            values = list(pick(row))
            try:
                for index, processor in converters:
                    values[index] = processor(values[index])
            except Exception as exc:
                raise StatementError(
                    f"cannot convert a value of column {keys[index]!r}: {exc}",
                    self.sql,
                    None,
                    exc,
                ) from exc
            parameters.append(dict(zip(keys, values, strict=True)) if self.named else tuple(values))
        return parameters

    def _execute_multi_row(
        self, connection: Connection, parameters: list[Any], clause: tuple[str, str, str]
    ) -> None:
        # SQLite releases the GIL for each row of an executemany; a busy
        # application thread then takes it back every time, and the writer
        # waits a switch interval per row. One statement of many rows releases
        # it once.
        # TODO: each batch still costs a commit (an fsync in WAL mode with
        # synchronous=FULL) and several GIL hand-overs; against a thread that
        # runs empty jobs back to back the writer falls behind and the queue
        # drops rows. Larger transactions while the queue is deep, or
        # synchronous=NORMAL in WAL mode, would let it keep up.
        head, values, tail = clause
        step = self.rows_per_statement
        for start in range(0, len(parameters), step):
            chunk = parameters[start : start + step]
            sql = head + ", ".join([values] * len(chunk)) + tail
            connection.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))


def _one_item(key: str) -> Callable[[Row], tuple[Any, ...]]:
    return lambda row: (row[key],)


def _values_clause(sql: str, parameters: int) -> tuple[str, str, str] | None:
    """The INSERT split around its one row of values: head, "(?, ...)", tail."""
    start = sql.find(" VALUES (")
    end = sql.find(")", start)
    if start < 0 or end < 0:
        return None
    values = sql[start + len(" VALUES ") : end + 1]
    if values.count("?") != parameters or "'" in values:
        return None
    return sql[: start + len(" VALUES ")], values, sql[end + 1 :]


class _NotPreparable(Exception):
    """The compiled statement does not bind exactly the row's columns."""


class _PreparedInserts:
    """Prepared inserts by the columns rows carry; None where rows differ or do not fit."""

    def __init__(self, statement: Insert, table: Table, dialect: Dialect) -> None:
        self._statement = statement
        self._table = table
        self._dialect = dialect
        self._by_keys: dict[tuple[str, ...], _PreparedInsert | None] = {}

    def get(self, rows: Sequence[Row]) -> _PreparedInsert | None:
        if not rows:
            return None
        first = rows[0].keys()
        if any(row.keys() != first for row in rows):
            return None
        keys = tuple(first)
        if keys not in self._by_keys:
            self._by_keys[keys] = self._prepare(keys)
        return self._by_keys[keys]

    def _prepare(self, keys: tuple[str, ...]) -> _PreparedInsert | None:
        if not set(keys) <= set(self._table.columns.keys()):
            return None
        try:
            return _PreparedInsert(self._statement, self._table, self._dialect, keys)
        except _NotPreparable:
            return None


def _rows_per_statement(dialect: str, columns: int) -> int:
    """Rows per INSERT so that its bound parameters stay under the backend's limit."""
    if dialect == "sqlite":
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    else:
        limit = 65_535
    return max(1, min(limit // columns, 1_000))


def _is_outage(exc: Exception) -> bool:
    """Whether *exc* means "the database is away" rather than "this row is refused"."""
    return isinstance(exc, OperationalError | InterfaceError) or not isinstance(
        exc, SQLAlchemyError
    )


def _describe(exc: Exception) -> str:
    # The driver's message, without SQLAlchemy's statement and parameter dump,
    # which may hold job data.
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0] if text else ''}"[:500]


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number; got {value!r}.")
