"""``reec-otel db``: the LogJob table's migrations."""

from __future__ import annotations

import sys

import click

from reec_otel._cli._common import Settings, database_url_option, masked, query_engine
from reec_otel._migrations import SchemaStatus, Target, schema_status, upgrade, upgrade_sql


@click.group("db")
def db() -> None:
    """Create and migrate the LogJob table (Alembic migrations shipped in the package).

    The revision is kept in a version table of the LogJob table's own,
    <table>_schema_version, never in the application's alembic_version.

    \b
    Examples:
      reec-otel db upgrade --database-url postgresql+psycopg://admin@db/app
      reec-otel db sql --database-url mysql+pymysql://db/app > logjob.sql
    """


def _target(settings: Settings) -> Target:
    return Target(settings.table_name, settings.schema)


def describe(settings: Settings, status: SchemaStatus) -> str:
    where = f"{settings.qualified_table} in {masked(settings.url)}"
    if not status.table_present:
        return f"{where}: no table yet; 'reec-otel db upgrade' creates it at {status.head}."
    if status.revision is None:
        return (
            f"{where}: table present, created outside the migrations; "
            f"'reec-otel db upgrade' records it at {status.head}."
        )
    if status.is_current:
        return f"{where}: at {status.revision} (head)."
    return f"{where}: at {status.revision}; head is {status.head} ('reec-otel db upgrade')."


@db.command("upgrade")
@database_url_option
def upgrade_command(database_url: str | None) -> None:
    """Bring the LogJob table to the newest revision.

    An empty database gets the table; a table the writer created earlier is
    recognised, checked and recorded, not recreated.

    \b
    Example:
      reec-otel db upgrade --database-url postgresql+psycopg://admin@db/app
    """
    settings = Settings.resolve(database_url)
    engine = query_engine(settings.url, create_sqlite_file=True)
    try:
        with engine.begin() as connection:
            before, after = upgrade(connection, _target(settings))
    finally:
        engine.dispose()
    where = f"{settings.qualified_table} in {masked(settings.url)}"
    if before.revision == after.revision:
        click.echo(f"{where}: already at {after.revision} (head).")
    elif before.is_unversioned:
        click.echo(f"{where}: existing table recorded at {after.revision} (head).")
    else:
        click.echo(f"{where}: upgraded from {before.revision or 'nothing'} to {after.revision}.")


@db.command("current")
@database_url_option
def current_command(database_url: str | None) -> None:
    """Say which revision the LogJob table is at.

    \b
    Example:
      reec-otel db current
    """
    settings = Settings.resolve(database_url)
    engine = query_engine(settings.url)
    try:
        with engine.connect() as connection:
            status = schema_status(connection, _target(settings))
    finally:
        engine.dispose()
    click.echo(describe(settings, status))


@db.command("sql")
@database_url_option
def sql_command(database_url: str | None) -> None:
    """Print the DDL that 'db upgrade' would run on an empty database; run nothing.

    The SQL is written for the URL's database (its dialect); nothing connects.

    \b
    Example:
      reec-otel db sql --database-url postgresql+psycopg://db/app > logjob.sql
    """
    settings = Settings.resolve(database_url)
    upgrade_sql(settings.url, _target(settings), output=sys.stdout)
