"""The LogJob table's migrations, run by Alembic from inside the package.

Nothing outside the package is needed: no ``alembic.ini``, no script folder of
the application's. Each LogJob table keeps its revision in a version table of
its own, named after it (``log_job`` -> ``log_job_schema_version``), in the same
schema, so it never meets the application's ``alembic_version`` nor another
LogJob table's history.

A LogJob table the writer created before any migration ran (it creates the
table on its first connection) has exactly the baseline's shape: ``upgrade``
checks its columns, records it at the baseline and goes on from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import TYPE_CHECKING, Final, TextIO

from sqlalchemy import inspect
from sqlalchemy.engine import URL, Connection

from reec_otel._errors import ReecOtelError
from reec_otel._schema import COLUMN_NAMES, validate_identifier

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "BASELINE_REVISION",
    "MigrationError",
    "SchemaStatus",
    "Target",
    "head_revision",
    "schema_status",
    "upgrade",
    "upgrade_sql",
    "version_table_name",
]

BASELINE_REVISION: Final = "0001_baseline"

_VERSION_SUFFIX: Final = "_schema_version"
_MAX_IDENTIFIER: Final = 63


class MigrationError(ReecOtelError):
    """The database holds something the migrations cannot take over."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The LogJob table migrations apply to."""

    table_name: str
    schema: str | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.table_name, "The LogJob table name")
        if self.schema is not None:
            validate_identifier(self.schema, "The LogJob schema")

    @property
    def version_table(self) -> str:
        return version_table_name(self.table_name)


@dataclasses.dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands: table present, and its recorded revision."""

    table_present: bool
    revision: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.revision == self.head

    @property
    def is_unversioned(self) -> bool:
        """The table exists but no migration ever recorded it (the writer made it)."""
        return self.table_present and self.revision is None


def version_table_name(table_name: str) -> str:
    """The version table of a LogJob table, within the 63-character identifier limit."""
    name = f"{table_name}{_VERSION_SUFFIX}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table_name.encode()).hexdigest()[:8]
    keep = _MAX_IDENTIFIER - len(_VERSION_SUFFIX) - len(digest) - 1
    return f"{table_name[:keep]}_{digest}{_VERSION_SUFFIX}"


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert head is not None  # the package ships at least the baseline
    return head


def schema_status(connection: Connection, target: Target) -> SchemaStatus:
    """Where *target* stands on *connection*; changes nothing."""
    from alembic.runtime.migration import MigrationContext

    inspector = inspect(connection)
    present = inspector.has_table(target.table_name, schema=target.schema)
    revision = None
    if inspector.has_table(target.version_table, schema=target.schema):
        context = MigrationContext.configure(connection, opts=_version_options(target))
        revision = context.get_current_revision()
    return SchemaStatus(present, revision, head_revision())


def upgrade(connection: Connection, target: Target) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring *target* to the head revision; return the status before and after.

    A table without a recorded revision is checked against the baseline's
    columns and recorded at the baseline, never recreated.
    """
    from alembic import command

    # TODO: two upgrades racing on an empty database both try CREATE TABLE and
    # one fails; a backend lock around this (pg_advisory_xact_lock, GET_LOCK,
    # SQLite's write lock) keyed on the version table would serialise them.
    before = schema_status(connection, target)
    config = _config(target, connection=connection)
    # TODO: the writer creates the table from the current model and records no
    # revision; once a second revision exists, an unversioned table must be
    # matched to the revision its columns correspond to (or the writer must
    # record head when it creates the table), not assumed to be the baseline.
    if before.is_unversioned:
        _require_baseline_columns(connection, target)
        command.stamp(config, BASELINE_REVISION)
    command.upgrade(config, "head")
    return before, schema_status(connection, target)


def upgrade_sql(url: URL, target: Target, output: TextIO | None = None) -> str:
    """The DDL that brings an empty database to head, without connecting to it."""
    from alembic import command

    buffer = output if output is not None else io.StringIO()
    config = _config(target, url=url, output=buffer)
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue() if isinstance(buffer, io.StringIO) else ""


def _require_baseline_columns(connection: Connection, target: Target) -> None:
    found = {c["name"] for c in inspect(connection).get_columns(target.table_name, target.schema)}
    missing = sorted(set(COLUMN_NAMES) - found)
    if missing:
        raise MigrationError(
            f"The table {target.table_name!r} exists but is not a LogJob table "
            f"(missing columns: {', '.join(missing)}); it was left untouched."
        )


def _version_options(target: Target) -> dict[str, object]:
    return {"version_table": target.version_table, "version_table_schema": target.schema}


def _config(
    target: Target | None,
    *,
    connection: Connection | None = None,
    url: URL | None = None,
    output: TextIO | None = None,
) -> Config:
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location", "reec_otel:_migrations")
    config.attributes.update(
        target=target,
        connection=connection,
        url=url,
        version_options=None if target is None else _version_options(target),
    )
    return config
