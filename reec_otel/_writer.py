"""The background writer: a bounded queue of rows, batched into the database.

It knows the database and rows, nothing of spans or jobs. ``submit()`` is the
only call made on an application's thread and does no I/O: it appends to a
queue. One daemon thread takes batches from the queue and inserts each as
multi-row statements in one transaction, idempotently on (span_id, state_job),
with instrumentation suppressed so that its statements make no spans.

When the database is unreachable, the batch is retried with backoff and the
rows in memory move to a spool file (see ``_spool``), replayed oldest first
when the database returns. Whether a failed write reached the database or not
is asked of the database itself: when it answers a plain ``SELECT 1``, the
batch is at fault and is written row by row, a row it refuses being set aside
and reported; when it does not, the database is away. Rows beyond memory and
spool are dropped, counted and reported, Failed rows last. After ``os.fork()``
the child starts empty, with its own lock, thread, spool file and connections.
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
from sqlalchemy import Dialect, Table, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import Insert

from reec_otel._diagnostics import RateLimitedLog
from reec_otel._errors import ConfigurationError
from reec_otel._sanitize import redact_url_passwords
from reec_otel._schema import ROW_COLUMNS, LogJobRow, finish_rows
from reec_otel._settings import masked_url
from reec_otel._spool import Entry, Spool, entry_as_mapping

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
# What waits in the queue is an Entry (see _spool): a mapping as submitted, or
# the values of a LogJobRow as a plain tuple in the order of ROW_COLUMNS. A
# plain tuple of strings, numbers and timestamps is dropped from the garbage
# collector's watch after its first collection, as a dict of such values is,
# where a LogJobRow stays watched: with a full queue, every full collection
# would walk all of them.
_STATE_AT: Final = ROW_COLUMNS.index("state_job")

DEFAULT_MAX_QUEUE_ROWS: Final = 100_000
DEFAULT_BATCH_ROWS: Final = 1_000
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 0.5
DEFAULT_TIMEOUT_MILLIS: Final = 30_000
_MAX_BACKOFF_SECONDS: Final = 5.0
# Words of the errors SQLite, PostgreSQL and MariaDB give for lock conflicts.
_TRANSIENT_SIGNS: Final = (
    "database is locked",
    "database table is locked",
    "deadlock",
    "lock wait timeout",
    "could not serialize",
    "could not obtain lock",
)
# The state whose rows are kept when something must be dropped.
_PRECIOUS_STATE: Final = "Failed"
_CONNECT_TIMEOUT_SECONDS: Final = 5
# Rows moved to the spool file per write when memory fills.
_SPILL_SLICE_ROWS: Final = 2_000


class WriterState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    SHUT_DOWN = "shut down"


@dataclasses.dataclass(frozen=True)
class WriterStatistics:
    """Counters of a writer since it was created (or since fork, in a child)."""

    rows_written: int
    rows_queued: int
    rows_spooled: int
    rows_dropped: int
    rows_rejected: int
    write_failures: int
    internal_errors: int
    last_error: str | None


def create_database_engine(url: str | URL) -> Engine:
    """An engine for the writer: short connect timeouts, SQLite in WAL mode.

    Connects to nothing: the first connection is made by the writer's thread.
    """
    url = make_url(url)
    backend = url.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        # A file has no connection to lose: no ping before each batch.
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if url.database in (None, "", ":memory:"):
            options["poolclass"] = StaticPool
    elif backend == "postgresql" or backend in ("mysql", "mariadb"):
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_SECONDS}
    try:
        engine = create_engine(url, **options)
    except (ImportError, SQLAlchemyError) as exc:
        raise ConfigurationError(
            f"Cannot create a database engine for {masked_url(url)}: "
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
        spool: where rows wait on disk while the database is away; None keeps
            them in memory only.
    """

    def __init__(
        self,
        engine: Engine,
        table: Table,
        *,
        max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
        spool: Spool | None = None,
    ) -> None:
        _require_positive("max_queue_rows", max_queue_rows)
        _require_positive("batch_rows", batch_rows)
        _require_positive("flush_interval_seconds", flush_interval_seconds)
        self.engine = engine
        self.table = table
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.flush_interval_seconds = flush_interval_seconds
        self.spool = spool
        # Past this many rows in memory the writer moves them to the spool.
        self._spill_at = max(max_queue_rows // 2, 1)
        self._insert = _idempotent_insert(table, engine.dialect.name)
        self._prepared = _PreparedInserts(self._insert, table, engine.dialect)
        self._warnings = RateLimitedLog(logger)
        self._reset_runtime_state()
        self.state = WriterState.CREATED
        _register_fork_handler(self)

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Entry] = deque()
        self._queued_precious = 0  # Failed rows in the queue
        self._in_flight: list[Entry] = []  # rows out of the queue, not yet written or spooled
        self._thread: threading.Thread | None = None
        self._accepted = 0  # rows ever queued (or adopted from an ended process's spool)
        self._settled = 0  # rows that left for good: written, rejected or dropped
        self._written = 0
        self._dropped = 0
        self._rejected = 0
        self._failures = 0
        self._internal_errors = 0
        self._last_error: str | None = None
        self._flush_waiters = 0
        self._outage = False
        self._stopping = False
        self._abandoned = False  # shutdown's deadline passed while the thread was busy
        self._exited = False  # the thread has left its loop
        self._stop_deadline = float("inf")
        self._table_ready = False

    # -- called by applications' threads ------------------------------------

    def submit(self, row: Row) -> bool:
        """Queue one row; never blocks on I/O. False if the row was dropped.

        When memory is full a Failed row takes the place of the newest other
        row, which is dropped instead.
        """
        return self._enqueue((row.values_in_order() if type(row) is LogJobRow else row,))

    def submit_pending(self, *rows: tuple[Any, ...]) -> bool:
        """Queue rows the span processor made with ``pending_row``, as ``submit``
        does; this thread finishes them (ids and dates) off the job's thread.
        False if any was dropped."""
        return self._enqueue(rows)

    def _enqueue(self, entries: tuple[Entry, ...]) -> bool:
        refused = 0
        with self._lock:
            queue = self._queue
            # Counted apart from refused rows: making room for a Failed row
            # drops another one, and that is worth a warning too.
            dropped_before = self._dropped
            for entry in entries:
                if self._stopping or (
                    len(queue) + len(self._in_flight) >= self.max_queue_rows
                    and not self._make_room(entry)
                ):
                    refused += 1
                    self._dropped += 1
                    continue
                queue.append(entry)
                self._accepted += 1
                self._queued_precious += _is_precious(entry)
                if self._thread is None:
                    self._start_thread()
                if len(queue) in (1, self.batch_rows, self._spill_at):
                    self._wake.notify()
            if self._dropped == dropped_before:
                return True
            dropped = self._dropped
            reason = "is shut down" if self._stopping else "memory and spool are full"
        self._warnings.log(
            logging.WARNING,
            "drop",
            "LogJob writer %s: rows are being dropped, Failed rows last (%d dropped in all).",
            reason,
            dropped,
        )
        return not refused

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
        deadline. Rows still unwritten at the deadline go to the spool file,
        where the next writer on the same spool directory finds them; without
        a spool (or room in it) they are counted as dropped.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            if self.state is WriterState.SHUT_DOWN:
                return self._settled >= self._accepted
            self.state = WriterState.SHUT_DOWN
            self._stopping = True
            self._stop_deadline = deadline
            thread = self._thread
            self._wake.notify_all()
        if thread is not None:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            # Decided under the lock the thread takes as it exits, so that
            # exactly one of the two closes the connections.
            alive = thread is not None and not self._exited
            self._abandoned = alive
            # Rows out of the queue are gone only if the thread wrote or
            # spooled them; a thread that ended on a fault left them here.
            # TODO: a thread still busy past the deadline may yet write the
            # batch it holds, which is then counted here and by the thread.
            # Closing it needs the thread to give its batch up under the lock
            # before it writes, and shutdown to wait for that hand-over.
            leftover = [*self._in_flight, *self._queue]
            self._queue.clear()
            self._queued_precious = 0
        self._finish_pending(leftover)
        kept = evicted = 0
        if self.spool is not None and leftover:
            failed = [row for row in leftover if _is_precious(row)]
            if failed:
                # Failed rows first, and rows of other states already in the
                # spool give way to them if they do not fit.
                evicted = self.spool.make_room(failed, keep=_is_precious)
                leftover.sort(key=lambda row: not _is_precious(row))
            kept = self.spool.append(leftover)
        spooled = self.spool.pending if self.spool is not None else 0
        with self._lock:
            self._dropped += len(leftover) - kept + evicted
            self._settled += len(leftover) - kept + evicted
            finished = not alive and not leftover and not spooled
        self._report_unwritten(len(leftover) - kept, spooled)
        if self.spool is not None:
            self.spool.close()
        if not alive:
            self.engine.dispose()
        return finished

    def statistics(self) -> WriterStatistics:
        spooled = self.spool.pending if self.spool is not None else 0
        with self._lock:
            return WriterStatistics(
                rows_written=self._written,
                # Accepted and not yet settled: in memory, being written, or spooled.
                rows_queued=self._accepted - self._settled,
                rows_spooled=spooled,
                rows_dropped=self._dropped,
                rows_rejected=self._rejected,
                write_failures=self._failures,
                internal_errors=self._internal_errors,
                last_error=self._last_error,
            )

    # -- the queue (callers hold the lock) -----------------------------------

    def _make_room(self, row: Entry) -> bool:
        """Whether *row* may be queued though memory holds its bound of rows."""
        # The batch being written counts too: it is still held in memory. Only
        # a Failed row may use the room that batch holds, so memory stays
        # within the bound plus one batch.
        if not _is_precious(row):
            return False
        if len(self._queue) < self.max_queue_rows:
            return True
        if self._queued_precious >= len(self._queue):
            return False
        # The newest other row gives way: older rows keep their order.
        for index in range(len(self._queue) - 1, -1, -1):
            if not _is_precious(self._queue[index]):
                del self._queue[index]
                self._dropped += 1
                self._settled += 1
                return True
        return False  # pragma: no cover - the count above says one exists

    def _take(self, count: int) -> list[Entry]:
        rows = [self._queue.popleft() for _ in range(count)]
        self._queued_precious -= sum(map(_is_precious, rows))
        return rows

    def _put_back(self, rows: Sequence[Entry]) -> None:
        self._queue.extendleft(reversed(rows))
        self._queued_precious += sum(map(_is_precious, rows))

    def _spooled(self) -> int:
        return self.spool.pending if self.spool is not None else 0

    # -- the writer's thread -------------------------------------------------

    def _start_thread(self) -> None:
        self.state = WriterState.RUNNING
        self._thread = threading.Thread(target=self._run, name="reec-otel-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._run_until_stopped()
        except Exception:
            # A fault of this package. The rows this thread held are left in
            # memory, for shutdown() to spool or count as dropped.
            self._internal_error("running the writer's thread")
        finally:
            with self._lock:
                self._exited = True
                abandoned = self._abandoned
            if abandoned:
                # shutdown() returned before this thread finished: close here.
                self.engine.dispose()

    def _run_until_stopped(self) -> None:
        # The writer's own statements must not become spans (or rows).
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        self._adopt_orphans()
        backoff = 0.0
        while True:
            if backoff:
                self._wait_out(backoff)
            elif len(self._queue) >= self._spill_at:
                self._spill()
            taken = self._next_batch()
            if taken is None:
                return
            batch, from_memory = taken
            if from_memory:
                self._finish_pending(batch)
            done = self._write_safely(batch)
            if not self._finish(batch, from_memory, done):
                return
            if done == len(batch):
                backoff, self._outage = 0.0, False
            else:
                backoff = min(max(backoff * 2, 0.1), _MAX_BACKOFF_SECONDS)
                self._outage = True

    def _next_batch(self) -> tuple[list[Entry], bool] | None:
        """The next rows to write, and whether they came from memory (else the spool)."""
        with self._lock:
            waited_since = time.monotonic()
            while True:
                spooled = self._spooled()
                if self._stopping and (
                    not (self._queue or spooled) or time.monotonic() >= self._stop_deadline
                ):
                    return None
                if spooled or (self._queue and self._batch_due(waited_since)):
                    break
                timeout = None
                if self._queue:
                    timeout = self.flush_interval_seconds - (time.monotonic() - waited_since)
                self._wake.wait(timeout)
            if not spooled:
                self._in_flight = self._take(min(self.batch_rows, len(self._queue)))
                return self._in_flight, True
        assert self.spool is not None
        rows = self.spool.peek(self.batch_rows)
        self._count_lost(self.spool.take_lost())
        return rows, False

    def _batch_due(self, waited_since: float) -> bool:
        return (
            len(self._queue) >= self.batch_rows
            or self._flush_waiters > 0
            or self._stopping
            or time.monotonic() - waited_since >= self.flush_interval_seconds
        )

    def _finish(self, batch: list[Entry], from_memory: bool, done: int) -> bool:
        """Return the unwritten rest of a batch to where it came from; False: stop."""
        with self._lock:
            self._in_flight = []
            if self._abandoned:
                return False
            if from_memory:
                self._put_back(batch[done:])
        if not from_memory and self.spool is not None:
            self.spool.consume(done)
        return True

    def _wait_out(self, backoff: float) -> None:
        """Wait before retrying, moving arriving rows to the spool meanwhile."""
        end = time.monotonic() + backoff
        while True:
            self._spill()
            with self._lock:
                # Shutting down, the wait ends at the deadline at the latest.
                remaining = min(end, self._stop_deadline) - time.monotonic()
                if remaining <= 0:
                    return
                self._wake.wait(remaining)

    def _spill(self) -> None:
        """Move the rows now in memory to the spool file, oldest first.

        A slice at a time, so that only one slice is held twice (as rows and
        as encoded lines) while new rows keep arriving.
        """
        if self.spool is None:
            return
        with self._lock:
            left = len(self._queue)
        moved = 0
        while left > 0:
            with self._lock:
                if not self._queue or self._abandoned:
                    break
                count = min(left, len(self._queue), _SPILL_SLICE_ROWS)
                rows = self._in_flight = self._take(count)
            self._finish_pending(rows)
            try:
                stored = self.spool.append(rows)
            except Exception:
                self._internal_error("spooling rows")
                stored = 0
            with self._lock:
                self._in_flight = []
                self._put_back(rows[stored:])
            moved += stored
            left -= count
            if stored < len(rows):
                break  # the spool is full or failing
        if moved:
            logger.debug("LogJob writer moved %d rows to its spool file.", moved)

    def _adopt_orphans(self) -> None:
        if self.spool is None:
            return
        try:
            found = self.spool.adopt_orphans()
        except Exception:
            self._internal_error("reading spool files")
            return
        with self._lock:
            self._accepted += found

    def _count_lost(self, lost: int) -> None:
        if not lost:
            return
        with self._lock:
            self._dropped += lost
            self._settled += lost
            self._wake.notify_all()

    def _finish_pending(self, rows: list[Entry]) -> None:
        """Finish the span processor's pending rows in *rows* (see pending_row);
        one that cannot be finished is taken out and refused, as the database
        would refuse it."""
        for entry, exc in finish_rows(rows):
            self._reject(entry, exc, "whose time or ids are out of range")
            self._settle(0, rejected=1)

    def _write_safely(self, batch: list[Entry]) -> int:
        if not batch:
            return 0
        try:
            return self._write(batch)
        except Exception:
            # A fault of this package must not end the thread that writes rows.
            self._internal_error("writing a batch")
            return 0

    def _write(self, batch: list[Entry]) -> int:
        """Insert *batch*; return how many rows, from the front, are settled.

        Fewer than all means "try the rest again later": the database is away.
        """
        try:
            self._ensure_table()
            with self.engine.begin() as connection:
                self._insert_rows(connection, batch)
        except Exception as exc:
            if not self._table_ready or _is_transient(exc) or not self._reachable():
                self._note_failure(exc, len(batch))
                return 0
            # The database answers, so something in the batch is refused:
            # find out which rows, one by one.
            return self._write_one_by_one(batch)
        self._settle(len(batch), rejected=0)
        logger.debug("LogJob writer wrote %d rows.", len(batch))
        return len(batch)

    def _write_one_by_one(self, batch: list[Entry]) -> int:
        for index, row in enumerate(batch):
            try:
                with self.engine.begin() as connection:
                    self._insert_rows(connection, [row])
            except Exception as exc:
                if _is_transient(exc) or not self._reachable():
                    self._note_failure(exc, len(batch) - index)
                    return index
                self._reject(row, exc)
                self._settle(0, rejected=1)
            else:
                self._settle(1, rejected=0)
        return len(batch)

    def _reachable(self) -> bool:
        """Whether the database answers at all, on a fresh connection."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def _insert_rows(self, connection: Connection, rows: Sequence[Entry]) -> None:
        for run in _runs_of_same_columns(rows):
            prepared = self._prepared.get(run)
            if prepared is None:
                connection.execute(self._insert, [dict(entry_as_mapping(row)) for row in run])
            else:
                prepared.execute(connection, run)

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

    def _note_failure(self, exc: BaseException, waiting: int) -> None:
        self._table_ready = False
        message = _describe(exc)
        with self._lock:
            self._failures += 1
            self._last_error = message
        self._warnings.log(
            logging.WARNING,
            "unreachable",
            "LogJob writer cannot write to the database; %d rows wait and will be retried: %s",
            waiting,
            message,
        )

    def _reject(self, entry: Entry, exc: BaseException, why: str = "the database refused") -> None:
        row = entry_as_mapping(entry)
        message = _describe(exc)
        with self._lock:
            self._last_error = message
        self._warnings.log(
            logging.WARNING,
            "reject",
            "LogJob writer set aside a row %s (job %r, state %r): %s",
            why,
            row.get("name_job"),
            row.get("state_job"),
            message,
        )

    def _internal_error(self, doing: str) -> None:
        with self._lock:
            self._internal_errors += 1
            count = self._internal_errors
        self._warnings.log(
            logging.ERROR,
            "internal",
            "LogJob writer failed while %s (%d internal errors so far).",
            doing,
            count,
            exc_info=True,
        )

    def _report_unwritten(self, dropped: int, spooled: int) -> None:
        if dropped:
            logger.warning(
                "LogJob writer shut down with %d rows unwritten and nowhere to keep them.",
                dropped,
            )
        if spooled:
            assert self.spool is not None
            logger.warning(
                "LogJob writer shut down with %d rows in its spool directory %s; the next "
                "writer using that directory writes them.",
                spooled,
                self.spool.directory,
            )

    def _after_fork_in_child(self) -> None:
        # The parent's queued and spooled rows are the parent's to write; its
        # lock may have been held at the fork and its pooled connections are not ours.
        self._reset_runtime_state()
        self.engine.dispose(close=False)
        if self.spool is not None:
            self.spool.forget_after_fork()
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

    def __init__(
        self,
        statement: Insert,
        table: Table,
        dialect: Dialect,
        keys: tuple[str, ...],
        by_position: bool,
    ) -> None:
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
        # A queued LogJobRow's values are a tuple in column order; mappings
        # are read by key.
        picked: tuple[Any, ...] = (
            tuple(ROW_COLUMNS.index(name) for name in names) if by_position else names
        )
        self.pick = operator.itemgetter(*picked) if len(picked) > 1 else _one_item(picked[0])
        self.values_clause = (
            _values_clause(self.sql, len(names)) if dialect.name == "sqlite" else None
        )
        self.rows_per_statement = _rows_per_statement(dialect.name, len(names))
        self.converters = [
            (index, processor)
            for index, key in enumerate(names)
            if (processor := table.columns[key].type.dialect_impl(dialect).bind_processor(dialect))
        ]

    def execute(self, connection: Connection, rows: Sequence[Entry]) -> None:
        if self.values_clause is None:
            connection.exec_driver_sql(self.sql, self._parameters(rows))
        else:
            self._execute_multi_row(connection, self._parameters(rows), self.values_clause)

    def _parameters(self, rows: Sequence[Entry]) -> list[Any]:
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
        # TODO: against a thread that runs empty jobs back to back the writer
        # falls behind and, past the spool's cap, rows are dropped. Its time
        # goes to SQLite's page writes and fdatasync, then to GIL hand-overs
        # with the job's thread (synchronous=NORMAL was measured and did not
        # help); converting values in bulk rather than per row would shorten
        # the Python part.
        head, values, tail = clause
        step = self.rows_per_statement
        for start in range(0, len(parameters), step):
            chunk = parameters[start : start + step]
            sql = head + ", ".join([values] * len(chunk)) + tail
            connection.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))


def _one_item(key: Any) -> Callable[[Any], tuple[Any, ...]]:
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
        self._by_keys: dict[tuple[tuple[str, ...], bool], _PreparedInsert | None] = {}

    def get(self, run: Sequence[Entry]) -> _PreparedInsert | None:
        """The insert for *run*, rows of the same columns (see _runs_of_same_columns)."""
        if not run:
            return None
        first = run[0]
        if isinstance(first, tuple):
            # Rows of the processor: every column, by position.
            return self._prepared(ROW_COLUMNS, by_position=True)
        return self._prepared(tuple(first.keys()), by_position=False)

    def _prepared(self, keys: tuple[str, ...], by_position: bool) -> _PreparedInsert | None:
        if (keys, by_position) not in self._by_keys:
            self._by_keys[keys, by_position] = self._prepare(keys, by_position)
        return self._by_keys[keys, by_position]

    def _prepare(self, keys: tuple[str, ...], by_position: bool) -> _PreparedInsert | None:
        if not set(keys) <= set(self._table.columns.keys()):
            return None
        try:
            return _PreparedInsert(self._statement, self._table, self._dialect, keys, by_position)
        except _NotPreparable:
            return None


def _runs_of_same_columns(rows: Sequence[Entry]) -> list[Sequence[Entry]]:
    """The rows in order, cut where the columns they carry change.

    SQLAlchemy's generic executemany takes its columns from the first row and
    silently leaves out the values of any column only later rows carry.
    """
    if all(type(row) is tuple for row in rows):
        return [rows]
    return [list(run) for _, run in itertools.groupby(rows, key=_columns_of)]


def _columns_of(row: Entry) -> frozenset[str] | None:
    # None: a LogJobRow's values, which go by position, apart from any mapping.
    return None if isinstance(row, tuple) else frozenset(row.keys())


def _rows_per_statement(dialect: str, columns: int) -> int:
    """Rows per INSERT so that its bound parameters stay under the backend's limit."""
    if dialect == "sqlite":
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    else:
        limit = 65_535
    return max(1, min(limit // columns, 1_000))


def _is_precious(row: Entry) -> bool:
    state = row[_STATE_AT] if type(row) is tuple else row.get("state_job")  # type: ignore[union-attr]
    return bool(state == _PRECIOUS_STATE)


def _is_transient(exc: BaseException) -> bool:
    """A lock timeout, deadlock or serialisation failure: the same rows will pass later."""
    if not isinstance(exc, DBAPIError):
        return False
    message = str(exc.orig).lower()
    return any(sign in message for sign in _TRANSIENT_SIGNS)


def _describe(exc: BaseException) -> str:
    # The driver's message, without SQLAlchemy's statement and parameter dump,
    # which may hold job data, and without any password a URL in it may hold.
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(original).strip().splitlines()
    return redact_url_passwords(f"{type(original).__name__}: {lines[0] if lines else ''}")[:500]


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number; got {value!r}.")
