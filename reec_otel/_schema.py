"""The LogJob table: SQLAlchemy model, column types and indexes.

One row per state a run reaches. The table name and schema are configurable,
so besides the declarative :class:`LogJob` model (default name ``log_job``)
:func:`log_job_table` builds the same table under any validated name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped
from sqlalchemy.types import TypeDecorator

from reec_otel._errors import ConfigurationError

__all__ = ["DEFAULT_TABLE_NAME", "LogJob", "LogJobRow", "log_job_table", "validate_identifier"]

DEFAULT_TABLE_NAME = "log_job"

_MAX_IDENTIFIER_CHARS = 63  # PostgreSQL's limit; MariaDB allows 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}", re.ASCII)


def validate_identifier(value: str, what: str) -> str:
    """Return *value* if it is a plain SQL identifier, else raise ConfigurationError.

    Only letters, digits and underscores, not starting with a digit, at most 63
    characters (PostgreSQL's limit): such a name needs no quoting anywhere.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be a plain SQL identifier (letters, digits and underscores, "
            f"not starting with a digit, at most 63 characters); got {value!r}."
        )
    return value


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL keeps ``timestamp with time zone``; MariaDB and SQLite have no
    zone-aware type, so the UTC wall time is stored and UTC is attached on read.
    The session's time zone never changes what is stored or read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("LogJob timestamps must be timezone-aware.")
        value = value.astimezone(dt.UTC)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, dt.datetime):
            raise TypeError(f"Expected a timestamp from the database; got {value!r}.")
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC)


class JSONDocument(TypeDecorator[Any]):
    """A JSON column that also accepts an already serialised JSON text.

    Rows travel from spans as JSON text; parsing happens here, on the writer's
    thread, never on the job's.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            # Data cut by a span attribute limit, or plain text set by other
            # code: kept, as a JSON string, rather than refused with its row.
            return {"text": value}


def _long_text() -> Any:
    # TEXT on MariaDB holds only 64 KiB; the package's limits need MEDIUMTEXT.
    return Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _big_id() -> Any:
    # SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid.
    return BigInteger().with_variant(Integer(), "sqlite")


def _columns() -> list[Column[Any]]:
    return [
        Column("id_log_job", _big_id(), primary_key=True, autoincrement=True),
        Column("application_name", String(255), nullable=False),
        Column("name_job", String(255), nullable=False),
        Column("state_job", String(16), nullable=False),
        Column("trace_identifier", String(32), nullable=False),
        Column("span_id", String(16), nullable=False),
        Column("duration_ms", Double, nullable=True),
        Column("exception_type", String(255), nullable=True),
        Column("exception", _long_text(), nullable=True),
        Column("inner_exception", _long_text(), nullable=True),
        Column("stack_trace", _long_text(), nullable=True),
        Column("data", JSONDocument(), nullable=True),
        Column("message", _long_text(), nullable=True),
        Column("create_user", String(255), nullable=True),
        Column("create_date", UTCDateTime(), nullable=False),
        Column("create_date_only", Date, nullable=False),
    ]


def object_name(prefix: str, table_name: str, suffix: str) -> str:
    """The name of an index or constraint of the table, within every backend's limit.

    ``prefix_table_suffix`` when that fits in 63 characters; else the table part
    is shortened and a hash of the full table name keeps the name unique.
    """
    name = f"{prefix}_{table_name}_{suffix}"
    if len(name) <= _MAX_IDENTIFIER_CHARS:
        return name
    digest = hashlib.sha256(table_name.encode()).hexdigest()[:8]
    room = _MAX_IDENTIFIER_CHARS - len(prefix) - len(suffix) - len(digest) - 3
    return f"{prefix}_{table_name[:room]}_{digest}_{suffix}"


def _constraints(table_name: str) -> list[Any]:
    return [
        UniqueConstraint("span_id", "state_job", name=object_name("uq", table_name, "span_state")),
        Index(object_name("ix", table_name, "app_date"), "application_name", "create_date_only"),
        Index(object_name("ix", table_name, "trace"), "trace_identifier"),
        Index(
            object_name("ix", table_name, "app_state_date"),
            "application_name",
            "state_job",
            "create_date",
        ),
    ]


def log_job_table(
    table_name: str = DEFAULT_TABLE_NAME,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """Build the LogJob table under *table_name* and *schema* (both validated)."""
    validate_identifier(table_name, "The LogJob table name")
    if schema is not None:
        validate_identifier(schema, "The LogJob schema")
    return Table(
        table_name,
        metadata if metadata is not None else MetaData(),
        *_columns(),
        *_constraints(table_name),
        schema=schema,
    )


class _Base(DeclarativeBase):
    pass


class LogJob(_Base):
    """One state reached by one job run, as stored in the default ``log_job`` table.

    For a table under another name or schema, query the table that
    :func:`log_job_table` returns instead; the columns are the same.
    """

    __table__ = log_job_table(metadata=_Base.metadata)

    id_log_job: Mapped[int]
    application_name: Mapped[str]
    name_job: Mapped[str]
    state_job: Mapped[str]
    trace_identifier: Mapped[str]
    span_id: Mapped[str]
    duration_ms: Mapped[float | None]
    exception_type: Mapped[str | None]
    exception: Mapped[str | None]
    inner_exception: Mapped[str | None]
    stack_trace: Mapped[str | None]
    data: Mapped[Any]
    message: Mapped[str | None]
    create_user: Mapped[str | None]
    create_date: Mapped[dt.datetime]
    create_date_only: Mapped[dt.date]

    def __repr__(self) -> str:
        return (
            f"LogJob(id_log_job={self.id_log_job!r}, name_job={self.name_job!r}, "
            f"state_job={self.state_job!r}, trace_identifier={self.trace_identifier!r})"
        )


COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in LogJob.__table__.columns)
ROW_COLUMNS: tuple[str, ...] = tuple(n for n in COLUMN_NAMES if n != "id_log_job")
_ROW_COLUMN_SET = frozenset(ROW_COLUMNS)


class LogJobRow(Mapping[str, Any]):
    """One LogJob row on its way to the table: every column but the id.

    It reads as a mapping of column name to value, like the dict it could have
    been, and stores its values in slots: a third of a dict's memory, which
    counts while up to ``max_queue_rows`` rows wait for the database. Columns
    are set as attributes (``row.duration_ms = 12.5``).
    """

    __slots__ = ROW_COLUMNS

    application_name: str
    name_job: str
    state_job: str
    trace_identifier: str
    span_id: str
    duration_ms: float | None
    exception_type: str | None
    exception: str | None
    inner_exception: str | None
    stack_trace: str | None
    data: Any
    message: str | None
    create_user: str | None
    create_date: dt.datetime
    create_date_only: dt.date

    def __init__(
        self,
        application_name: str,
        name_job: str,
        state_job: str,
        trace_identifier: str,
        span_id: str,
        create_user: str | None,
        create_date: dt.datetime,
    ) -> None:
        # Positional, and the optional columns set to None here rather than
        # taken as defaults: a row is made for every state of every run.
        self.application_name = application_name
        self.name_job = name_job
        self.state_job = state_job
        self.trace_identifier = trace_identifier
        self.span_id = span_id
        self.duration_ms = None
        self.exception_type = None
        self.exception = None
        self.inner_exception = None
        self.stack_trace = None
        self.data = None
        self.message = None
        self.create_user = create_user
        self.create_date = create_date
        self.create_date_only = create_date.date()

    def values_in_order(self) -> tuple[Any, ...]:
        """The values in the order of ``ROW_COLUMNS``."""
        # Spelled out rather than through operator.attrgetter: the interpreter
        # reads a slot here directly, where attrgetter looks each name up
        # through the class and its abstract bases, several times slower.
        return (
            self.application_name,
            self.name_job,
            self.state_job,
            self.trace_identifier,
            self.span_id,
            self.duration_ms,
            self.exception_type,
            self.exception,
            self.inner_exception,
            self.stack_trace,
            self.data,
            self.message,
            self.create_user,
            self.create_date,
            self.create_date_only,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(ROW_COLUMNS, _row_values(self), strict=True))

    def __getitem__(self, column: str) -> Any:
        if column in _ROW_COLUMN_SET:
            return getattr(self, column)
        raise KeyError(column)

    def get(self, column: str, default: Any = None) -> Any:
        return getattr(self, column) if column in _ROW_COLUMN_SET else default

    def __iter__(self) -> Iterator[str]:
        return iter(ROW_COLUMNS)

    def __len__(self) -> int:
        return len(ROW_COLUMNS)

    def __repr__(self) -> str:
        return f"LogJobRow({self.as_dict()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Slots and no __dict__: without this, protocols 0 and 1 refuse the row.
        return _row_of_values, (_row_values(self),)


_row_values = operator.attrgetter(*ROW_COLUMNS)


def _row_of_values(values: Sequence[Any]) -> LogJobRow:
    """A row back from its values in the order of ``ROW_COLUMNS`` (for pickle and copy)."""
    row = LogJobRow.__new__(LogJobRow)
    for column, value in zip(ROW_COLUMNS, values, strict=True):
        setattr(row, column, value)
    return row


# -- rows still to be finished -------------------------------------------------
#
# The span processor runs on the job's thread, so it leaves the formatting of a
# row to the writer's thread: it queues a *pending row*, a plain tuple of the
# values of ROW_COLUMNS in order, except that the trace and span ids are still
# integers, create_date is still the span's nanoseconds since the epoch and
# create_date_only is None (which marks it: a finished row always has a date
# there). finish_rows() turns it into the row's values. A plain tuple of plain
# values is also what the garbage collector stops watching after one
# collection, which matters while thousands wait.

_TRACE_AT: Final = ROW_COLUMNS.index("trace_identifier")
_SPAN_AT: Final = ROW_COLUMNS.index("span_id")
_CREATED_AT: Final = ROW_COLUMNS.index("create_date")
_DATE_AT: Final = ROW_COLUMNS.index("create_date_only")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def pending_row(
    application_name: str,
    name_job: str,
    state_job: str,
    trace_id: int,
    span_id: int,
    create_user: str | None,
    time_ns: int,
    duration_ms: float | None = None,
    message: str | None = None,
    data: str | None = None,
    exception_type: str | None = None,
    exception: str | None = None,
    inner_exception: str | None = None,
    stack_trace: str | None = None,
) -> tuple[Any, ...]:
    """A row as the span processor queues it, in the order of ``ROW_COLUMNS``."""
    return (
        application_name,
        name_job,
        state_job,
        trace_id,
        span_id,
        duration_ms,
        exception_type,
        exception,
        inner_exception,
        stack_trace,
        data,
        message,
        create_user,
        time_ns,
        None,
    )


def is_pending(entry: object) -> bool:
    """True for a row from pending_row() that finish_rows() has not finished yet."""
    return (
        type(entry) is tuple
        and entry[_DATE_AT] is None
        # A finished row without its date is not pending: the database refuses it.
        and not isinstance(entry[_CREATED_AT], dt.datetime)
    )


def finish_rows(rows: list[Any]) -> list[tuple[tuple[Any, ...], Exception]]:
    """Finish, in place, the pending rows in *rows*; other rows stay as they are.

    A pending row that cannot be finished (a time beyond the year 9999 or
    before year 1, an id wider than its column or not a whole number, from
    spans of other code) is taken out of *rows*; it is returned with the
    reason, for the caller to count as refused.
    """
    unfinished: list[tuple[tuple[Any, ...], Exception]] = []
    # The rows of one run mostly follow each other (Enqueued and Processing
    # are queued together) with the same ids and often the same instant:
    # what was formatted for the row before is used again.
    trace_id = span_id = time_ns = None
    trace_hex = span_hex = ""
    created = _EPOCH
    created_date = created.date()
    for index, entry in enumerate(rows):
        if not is_pending(entry):
            continue
        try:
            # Only whole numbers are reused: a float equal to an int may
            # format otherwise.
            if type(entry[_TRACE_AT]) is not int or entry[_TRACE_AT] != trace_id:
                trace_hex = entry[_TRACE_AT].to_bytes(16, "big").hex()
                trace_id = _whole(entry[_TRACE_AT])
            if type(entry[_SPAN_AT]) is not int or entry[_SPAN_AT] != span_id:
                span_hex = entry[_SPAN_AT].to_bytes(8, "big").hex()
                span_id = _whole(entry[_SPAN_AT])
            if type(entry[_CREATED_AT]) is not int or entry[_CREATED_AT] != time_ns:
                # Times of other code's spans may be floats: the SDK takes any number.
                created = _EPOCH + dt.timedelta(microseconds=entry[_CREATED_AT] // 1000)
                created_date = created.date()
                time_ns = _whole(entry[_CREATED_AT])
        except Exception as exc:  # whatever other code's ids or times were
            unfinished.append((entry, exc))
            rows[index] = None
            continue
        rows[index] = (
            *entry[:_TRACE_AT],
            trace_hex,
            span_hex,
            *entry[_SPAN_AT + 1 : _CREATED_AT],
            created,
            created_date,
        )
    if unfinished:
        rows[:] = [row for row in rows if row is not None]
    return unfinished


def _whole(value: object) -> int | None:
    """*value* if it is an int (not a bool, not a float), else None."""
    return value if type(value) is int else None


def row_of_pending(pending: tuple[Any, ...]) -> LogJobRow:
    """The LogJobRow a pending row stands for; raises ValueError if it cannot be finished."""
    rows: list[Any] = [pending]
    for _, exc in finish_rows(rows):
        raise ValueError(f"This row cannot be finished: {exc}") from exc
    return _row_of_values(rows[0])
