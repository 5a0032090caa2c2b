"""``reec-otel jobs``: read LogJob.

These commands only read: they build their own engine from the settings,
never call configure(), create no table and no exporter.

Percentiles are computed here, not in SQL: SQLite has no percentile function
and MariaDB has one only as a window function, so ``stats`` fetches the
durations of each job's final rows within the window (one column, one query)
and takes the median and the 95th percentile with linear interpolation, as
PostgreSQL's ``percentile_cont`` does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click
from sqlalchemy import Select, Table, and_, exists, select
from sqlalchemy.engine import Connection

from reec_otel._attributes import StateJob
from reec_otel._cli._common import (
    STATE_STYLES,
    Duration,
    Settings,
    TraceId,
    console,
    database_url_option,
    format_option,
    reading,
    short_duration,
    short_time,
    utc_now,
    write_csv,
    write_json,
)
from reec_otel._schema import COLUMN_NAMES

FINAL_STATES = (StateJob.SUCCEEDED.value, StateJob.FAILED.value)
STATS_KEYS = ("name_job", "runs", "failures", "failure_rate", "median_ms", "p95_ms", "last_failure")
STUCK_KEYS = (
    "application_name",
    "name_job",
    "trace_identifier",
    "span_id",
    "create_user",
    "processing_since",
    "age_seconds",
)


@click.group("jobs")
def jobs() -> None:
    """Query recorded runs: list, show one trace, statistics, stuck runs.

    Only this application's rows are read (REEC_APPLICATION_NAME, else the
    OpenTelemetry service name) unless --app or --all-apps says otherwise.

    \b
    Examples:
      reec-otel jobs list --state Failed --since 24h
      reec-otel jobs show 4bf92f3577b34da6a3ce929d0e0e4736
      reec-otel jobs stats --since 7d --format json
    """


def app_options(function: Any) -> Any:
    function = click.option("--all-apps", is_flag=True, help="Rows of every application.")(function)
    return click.option(
        "--app", "application_name", metavar="NAME", help="Rows of this application."
    )(function)


def _for_app(query: Select[Any], table: Table, settings: Settings, all_apps: bool) -> Select[Any]:
    if all_apps:
        return query
    return query.where(table.c.application_name == settings.application_name)


def _since(query: Select[Any], table: Table, window: dt.timedelta | None) -> Select[Any]:
    if window is None:
        return query
    cutoff = utc_now() - window
    # The date column narrows the scan through the (application, date) index.
    return query.where(table.c.create_date_only >= cutoff.date(), table.c.create_date >= cutoff)


# -- list -------------------------------------------------------------------------


@jobs.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in StateJob], case_sensitive=False),
    help="Only rows in this state.",
)
@click.option("--name", "name_job", help="Only rows of this job.")
@click.option("--since", "window", type=Duration(), help="Only rows newer than this (2h, 7d).")
@click.option("--trace", "trace_id", type=TraceId(), help="Only rows of this trace.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@app_options
@format_option("table", "json", "csv")
@database_url_option
def list_command(
    state: str | None,
    name_job: str | None,
    window: dt.timedelta | None,
    trace_id: str | None,
    limit: int,
    application_name: str | None,
    all_apps: bool,
    output_format: str,
    database_url: str | None,
) -> None:
    """List rows, newest first.

    JSON is one array of objects keyed by the column names.

    \b
    Examples:
      reec-otel jobs list --state Failed --since 24h
      reec-otel jobs list --name nightly-backup --limit 5 --format json
    """
    settings = Settings.resolve(database_url, application_name)
    with reading(settings) as (connection, table):
        query = _for_app(select(table), table, settings, all_apps)
        query = _since(query, table, window)
        if state is not None:
            query = query.where(table.c.state_job == StateJob(state.capitalize()).value)
        if name_job is not None:
            query = query.where(table.c.name_job == name_job)
        if trace_id is not None:
            query = query.where(table.c.trace_identifier == trace_id)
        query = query.order_by(table.c.create_date.desc(), table.c.id_log_job.desc()).limit(limit)
        rows = [dict(row._mapping) for row in connection.execute(query)]
    _write_rows(rows, output_format, empty="No rows match.")


def _write_rows(rows: Sequence[Mapping[str, Any]], output_format: str, *, empty: str) -> None:
    _write_records(rows, output_format, COLUMN_NAMES, _rows_table, empty=empty)


def _write_records(
    records: Sequence[Mapping[str, Any]],
    output_format: str,
    keys: Sequence[str],
    as_table: Callable[[Sequence[Mapping[str, Any]]], Any],
    *,
    empty: str,
) -> None:
    """Records as one JSON array, CSV with *keys* as header, or a table for people."""
    if output_format == "json":
        write_json(list(records))
    elif output_format == "csv":
        write_csv(keys, records)
    elif not records:
        click.echo(empty, err=True)
    else:
        console().print(as_table(records))


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    several_apps = len({row["application_name"] for row in rows}) > 1
    table = RichTable(box=None, header_style="bold")
    # The time, state and trace id are never cut; the summary takes what is left.
    table.add_column("created (UTC)", no_wrap=True, min_width=19)
    if several_apps:
        table.add_column("app", no_wrap=True, overflow="ellipsis", min_width=8)
    table.add_column("job", no_wrap=True, overflow="ellipsis", min_width=12)
    table.add_column("state", no_wrap=True, min_width=10)
    table.add_column("ms", justify="right", no_wrap=True, min_width=8)
    table.add_column("trace", no_wrap=True, min_width=32)
    table.add_column("message / exception", overflow="ellipsis", no_wrap=True)
    for row in rows:
        cells: list[Any] = [short_time(row["create_date"])]
        if several_apps:
            cells.append(Text(row["application_name"]))
        cells += [
            Text(row["name_job"]),
            Text(row["state_job"], style=STATE_STYLES.get(row["state_job"], "")),
            short_duration(row["duration_ms"]),
            row["trace_identifier"],
            Text(_summary(row)),
        ]
        table.add_row(*cells)
    return table


def _summary(row: Mapping[str, Any]) -> str:
    if row["exception_type"]:
        text = f"{row['exception_type'].rpartition('.')[2]}: {row['exception'] or ''}"
    else:
        text = row["message"] or ""
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= 80 else first[:79] + "…"


# -- show -------------------------------------------------------------------------


@jobs.command("show")
@click.argument("trace_id", type=TraceId())
@format_option("table", "json")
@database_url_option
def show_command(trace_id: str, output_format: str, database_url: str | None) -> None:
    """Every row of one trace, in order, with a failure's stack trace in full.

    Rows of every application are shown: one trace may cross several.

    \b
    Example:
      reec-otel jobs show 4bf92f3577b34da6a3ce929d0e0e4736
    """
    settings = Settings.resolve(database_url)
    with reading(settings) as (connection, table):
        query = (
            select(table)
            .where(table.c.trace_identifier == trace_id)
            .order_by(table.c.create_date, table.c.id_log_job)
        )
        rows = [dict(row._mapping) for row in connection.execute(query)]
    if not rows:
        raise click.ClickException(f"No rows for trace {trace_id} in {settings.qualified_table}.")
    if output_format == "json":
        write_json(rows)
        return
    out = console()
    out.print(_rows_table(rows))
    for row in rows:
        _print_details(out, row)


def _print_details(out: Any, row: Mapping[str, Any]) -> None:
    from rich.rule import Rule
    from rich.text import Text

    details = [
        ("exception", _joined(row["exception_type"], row["exception"])),
        ("caused by", row["inner_exception"]),
        ("message", row["message"] if row["state_job"] in FINAL_STATES else None),
        ("user", row["create_user"] if row["state_job"] in FINAL_STATES else None),
        ("data", _json_text(row["data"])),
        ("stack trace", row["stack_trace"]),
    ]
    shown = [(label, value) for label, value in details if value]
    if not shown:
        return
    title = f"{row['name_job']} · {row['state_job']} · span {row['span_id']}"
    out.print(Rule(Text(title), align="left"))
    for label, value in shown:
        out.print(Text(f"{label}:", style="bold"))
        out.print(Text(str(value)))


def _joined(exception_type: str | None, message: str | None) -> str | None:
    if exception_type is None:
        return message
    return f"{exception_type}: {message}" if message else exception_type


def _json_text(value: Any) -> str | None:
    import json

    return None if value in (None, {}, []) else json.dumps(value, indent=2, ensure_ascii=False)


# -- stats ------------------------------------------------------------------------


@dataclasses.dataclass
class _JobStats:
    runs: int = 0
    failures: int = 0
    durations: list[float] = dataclasses.field(default_factory=list)
    last_failure: dt.datetime | None = None

    def add(self, state: str, duration_ms: float | None, created: dt.datetime) -> None:
        self.runs += 1
        if duration_ms is not None:
            self.durations.append(duration_ms)
        if state == StateJob.FAILED.value:
            self.failures += 1
            if self.last_failure is None or created > self.last_failure:
                self.last_failure = created

    def as_record(self, name_job: str) -> dict[str, Any]:
        return {
            "name_job": name_job,
            "runs": self.runs,
            "failures": self.failures,
            "failure_rate": round(self.failures / self.runs, 6),
            "median_ms": _rounded(statistics.median(self.durations) if self.durations else None),
            "p95_ms": _rounded(percentile(self.durations, 0.95)),
            "last_failure": self.last_failure,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The *fraction* quantile with linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def job_statistics(
    connection: Connection, table: Table, query_filter: Any, window: dt.timedelta
) -> list[dict[str, Any]]:
    """Per job name: runs, failures, rate, median and p95 duration, last failure."""
    query = select(
        table.c.name_job, table.c.state_job, table.c.duration_ms, table.c.create_date
    ).where(table.c.state_job.in_(FINAL_STATES))
    query = _since(query_filter(query), table, window)
    by_job: dict[str, _JobStats] = {}
    for row in connection.execute(query):
        by_job.setdefault(row.name_job, _JobStats()).add(
            row.state_job, row.duration_ms, row.create_date
        )
    return [by_job[name].as_record(name) for name in sorted(by_job)]


@jobs.command("stats")
@click.option(
    "--since",
    "window",
    type=Duration(),
    default="24h",
    show_default=True,
    help="The window: runs that ended within it.",
)
@app_options
@format_option("table", "json", "csv")
@database_url_option
def stats_command(
    window: dt.timedelta,
    application_name: str | None,
    all_apps: bool,
    output_format: str,
    database_url: str | None,
) -> None:
    """Per job: runs, failures, failure rate, median and p95 duration, last failure.

    A run counts when it ended (Succeeded or Failed) within the window. Light
    jobs record only failures, so their runs are their failures.

    \b
    Examples:
      reec-otel jobs stats
      reec-otel jobs stats --since 7d --format json
    """
    settings = Settings.resolve(database_url, application_name)
    with reading(settings) as (connection, table):
        records = job_statistics(
            connection, table, lambda q: _for_app(q, table, settings, all_apps), window
        )
    _write_records(
        records, output_format, STATS_KEYS, _stats_table, empty="No finished runs in the window."
    )


def _stats_table(records: Iterable[Mapping[str, Any]]) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    table = RichTable(box=None, header_style="bold")
    table.add_column("job")
    for header in ("runs", "failures", "failure rate", "median ms", "p95 ms"):
        table.add_column(header, justify="right")
    table.add_column("last failure (UTC)")
    for record in records:
        rate = record["failure_rate"]
        table.add_row(
            Text(record["name_job"]),
            str(record["runs"]),
            Text(str(record["failures"]), style="bold red" if record["failures"] else ""),
            f"{rate:.1%}",
            short_duration(record["median_ms"]),
            short_duration(record["p95_ms"]),
            short_time(record["last_failure"]),
        )
    return table


# -- stuck ------------------------------------------------------------------------


def stuck_runs(
    connection: Connection, table: Table, query_filter: Any, older_than: dt.timedelta
) -> list[dict[str, Any]]:
    """Runs whose last row is Processing, reached longer ago than *older_than*."""
    now = utc_now()
    final = table.alias("final")
    ended = exists().where(
        and_(final.c.span_id == table.c.span_id, final.c.state_job.in_(FINAL_STATES))
    )
    query = select(
        table.c.application_name,
        table.c.name_job,
        table.c.trace_identifier,
        table.c.span_id,
        table.c.create_user,
        table.c.create_date,
    ).where(
        table.c.state_job == StateJob.PROCESSING.value,
        table.c.create_date < now - older_than,
        ~ended,
    )
    query = query_filter(query).order_by(table.c.create_date)
    records = []
    for row in connection.execute(query):
        record = dict(row._mapping)
        since = record.pop("create_date")
        record["processing_since"] = since
        record["age_seconds"] = round((now - since).total_seconds(), 3)
        records.append(record)
    return records


@jobs.command("stuck")
@click.option(
    "--older-than",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Processing for longer than this.",
)
@app_options
@format_option("table", "json", "csv")
@database_url_option
def stuck_command(
    older_than: dt.timedelta,
    application_name: str | None,
    all_apps: bool,
    output_format: str,
    database_url: str | None,
) -> None:
    """Runs still Processing after --older-than: a killed process leaves one behind.

    \b
    Examples:
      reec-otel jobs stuck
      reec-otel jobs stuck --older-than 15m --format json
    """
    settings = Settings.resolve(database_url, application_name)
    with reading(settings) as (connection, table):
        records = stuck_runs(
            connection, table, lambda q: _for_app(q, table, settings, all_apps), older_than
        )
    _write_records(records, output_format, STUCK_KEYS, _stuck_table, empty="No stuck runs.")


def _stuck_table(records: Iterable[Mapping[str, Any]]) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    table = RichTable(box=None, header_style="bold")
    for header in ("app", "job", "processing since (UTC)", "for", "trace", "span", "user"):
        table.add_column(header)
    for record in records:
        table.add_row(
            Text(record["application_name"]),
            Text(record["name_job"]),
            short_time(record["processing_since"]),
            str(dt.timedelta(seconds=int(record["age_seconds"]))),
            record["trace_identifier"],
            record["span_id"],
            Text(record["create_user"] or ""),
        )
    return table
