"""What the commands share: settings, the read-only engine, errors, output."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Table, create_engine, inspect
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from reec_otel._errors import ConfigurationError, ReecOtelError
from reec_otel._schema import log_job_table
from reec_otel._settings import (
    LogJobOptions,
    default_application_name,
    resolve_database_url,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_DATABASE = 1
EXIT_USAGE = 2
_CONNECT_TIMEOUT_SECONDS = 5
_PIPE_WIDTH = 200


class UsageProblem(click.ClickException):
    """A bad argument or setting: one line, exit code 2."""

    exit_code = EXIT_USAGE


class DatabaseProblem(click.ClickException):
    """The database cannot answer: one line, exit code 1."""

    exit_code = EXIT_DATABASE


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn the package's and the database's exceptions into one-line errors."""
    try:
        yield
    except ConfigurationError as exc:
        raise UsageProblem(str(exc)) from None
    except SQLAlchemyError as exc:
        raise DatabaseProblem(describe_database_error(exc)) from None
    except ReecOtelError as exc:
        raise DatabaseProblem(str(exc)) from None


def describe_database_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line, without the statement or its parameters."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(original).strip().splitlines()
    first = lines[0] if lines else type(original).__name__
    return f"Database error: {type(original).__name__}: {first}"


def masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


# -- settings -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """The database, table and application a command works on."""

    url: URL
    table_name: str
    schema: str | None
    application_name: str

    @classmethod
    def resolve(cls, database_url: str | None, application_name: str | None = None) -> Settings:
        env = os.environ
        options = LogJobOptions.from_environment(env)
        return cls(
            url=resolve_database_url(database_url, env),
            table_name=options.table_name,
            schema=options.schema,
            application_name=application_name or default_application_name(env),
        )

    @property
    def table(self) -> Table:
        return log_job_table(self.table_name, self.schema)

    @property
    def qualified_table(self) -> str:
        return self.table_name if self.schema is None else f"{self.schema}.{self.table_name}"


def database_url_option(function: F) -> F:
    return click.option(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL of the LogJob database (default: REEC_DATABASE_URL, "
        "else sqlite:///reec_jobs.db).",
    )(function)


# -- the read-only engine -------------------------------------------------------


def query_engine(url: URL, *, create_sqlite_file: bool = False) -> Engine:
    """An engine with short connect timeouts that makes no new SQLite file unless asked."""
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite" and not create_sqlite_file:
        database = url.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        if on_disk and not Path(database).exists():
            raise DatabaseProblem(f"The SQLite database {database} does not exist.")
    if backend != "sqlite":
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_SECONDS
    try:
        return create_engine(url, connect_args=connect_args)
    except (ImportError, SQLAlchemyError) as exc:
        raise UsageProblem(
            f"Cannot use {masked(url)}: {exc}. Is the driver installed "
            "(pip install 'reec-otel[postgres]' or 'reec-otel[mysql]')?"
        ) from None


@contextlib.contextmanager
def reading(settings: Settings) -> Iterator[tuple[Connection, Table]]:
    """A connection and the LogJob table, which must exist; nothing is created."""
    engine = query_engine(settings.url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(settings.table_name, schema=settings.schema):
                raise DatabaseProblem(
                    f"The LogJob table {settings.qualified_table} does not exist in "
                    f"{masked(settings.url)}; the first recorded job or "
                    "'reec-otel db upgrade' creates it."
                )
            yield connection, settings.table
    finally:
        engine.dispose()


# -- parameters -----------------------------------------------------------------


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click 8.2+
    """A span of time such as 90s, 30m, 2h, 7d or 1w."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 2h, 7d or 1w.", param, ctx)
        number, unit = match.groups()
        return dt.timedelta(seconds=float(number) * _UNIT_SECONDS[unit])


class TraceId(click.ParamType):  # type: ignore[type-arg]  # generic only in click 8.2+
    """A trace id: 32 hexadecimal digits or a UUID, normalised to lowercase hex."""

    name = "trace_id"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from reec_otel._worker import parse_trace_identifier

        try:
            return f"{parse_trace_identifier(str(value).strip().lower()):032x}"
        except ValueError:
            self.fail(f"{value!r} is not a trace id (32 hexadecimal digits or a UUID).", param, ctx)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- output -----------------------------------------------------------------------


def format_option(*choices: str) -> Callable[[F], F]:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="table for people; json (one document) or csv for scripts.",
    )


def plain(value: Any) -> Any:
    """A value as JSON has it: timestamps and dates in ISO 8601."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def write_json(document: Any) -> None:
    json.dump(document, sys.stdout, default=plain, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def write_csv(columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_csv_cell(record.get(column)) for column in columns])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return plain(value)


def console() -> Any:
    """A rich console; into a pipe or file it is wide enough not to fold rows."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = max(out.width, _PIPE_WIDTH)
    return out


STATE_STYLES = {
    "Enqueued": "cyan",
    "Processing": "yellow",
    "Succeeded": "green",
    "Failed": "bold red",
}


def short_time(value: dt.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def short_duration(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"
