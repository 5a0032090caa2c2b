"""``reec-otel doctor``: check the settings, the database and the OTLP endpoint."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Final
from urllib.parse import urlsplit

import click
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reec_otel._cli._common import (
    DatabaseProblem,
    Settings,
    UsageProblem,
    console,
    database_url_option,
    describe_database_error,
    format_option,
    masked,
    query_engine,
    write_json,
)
from reec_otel._errors import ConfigurationError
from reec_otel._exporters import EXPORTER_GROUP, exporter_names, otlp_protocol
from reec_otel._migrations import Target, schema_status
from reec_otel._settings import ENV_ENABLE_GLOBAL_DB_SAVE, ENV_IS_SAVE_DB, env_bool

OK: Final = "ok"
WARNING: Final = "warning"
FAILED: Final = "failed"
SKIPPED: Final = "skipped"
_MARKS: Final = {OK: "[green]✓[/]", WARNING: "[yellow]![/]", FAILED: "[red]✗[/]", SKIPPED: "-"}
_ENDPOINT_TIMEOUT_SECONDS: Final = 3.0
_DEFAULT_ENDPOINTS: Final = {
    "grpc": "http://localhost:4317",
    "http/protobuf": "http://localhost:4318",
}


@dataclasses.dataclass
class Check:
    name: str
    status: str
    detail: str


@dataclasses.dataclass
class Report:
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    checks: list[Check] = dataclasses.field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    @property
    def ok(self) -> bool:
        return all(check.status != FAILED for check in self.checks)


def _settings_or_fail(report: Report, database_url: str | None) -> Settings | None:
    try:
        settings = Settings.resolve(database_url)
    except (ConfigurationError, UsageProblem) as exc:
        report.add("settings", FAILED, str(exc))
        return None
    report.settings.update(
        database_url=masked(settings.url),
        table=settings.qualified_table,
        application_name=settings.application_name,
    )
    report.add("settings", OK, "REEC_* variables read")
    return settings


def _saving(report: Report, env: Mapping[str, str]) -> bool:
    try:
        save_global = env_bool(env, ENV_ENABLE_GLOBAL_DB_SAVE, default=True)
        save_table = env_bool(env, ENV_IS_SAVE_DB, default=True)
    except ConfigurationError as exc:
        report.add("saving", FAILED, str(exc))
        return False
    report.settings.update(enable_global_db_save=save_global, is_save_db=save_table)
    if not (save_global and save_table):
        report.add("saving", WARNING, "rows are not written (a saving switch is off)")
    return save_global and save_table


def _database(report: Report, settings: Settings) -> None:
    try:
        engine = query_engine(settings.url)
    except (DatabaseProblem, UsageProblem) as exc:
        report.add("database", FAILED, exc.message)
        return
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            report.add("database", OK, f"{engine.dialect.name} reachable")
            status = schema_status(connection, Target(settings.table_name, settings.schema))
    except SQLAlchemyError as exc:
        report.add("database", FAILED, describe_database_error(exc))
        return
    finally:
        engine.dispose()
    if not status.table_present:
        report.add(
            "table",
            FAILED,
            f"{settings.qualified_table} does not exist "
            "(run 'reec-otel db upgrade', or record a first job)",
        )
        return
    report.add("table", OK, f"{settings.qualified_table} present")
    if status.revision is None:
        report.add(
            "migration",
            WARNING,
            "table not yet recorded by the migrations; 'reec-otel db upgrade' records it",
        )
    elif status.is_current:
        report.add("migration", OK, f"at {status.revision} (head)")
    else:
        report.add(
            "migration",
            FAILED,
            f"at {status.revision}, head is {status.head} (run 'reec-otel db upgrade')",
        )


def _exporters(report: Report, env: Mapping[str, str]) -> None:
    names = exporter_names(env)
    report.settings["traces_exporter"] = ",".join(names) or "none"
    if not names:
        report.add("otlp", SKIPPED, "spans are not exported (no OTEL_TRACES_EXPORTER or endpoint)")
        return
    known = {e.name for e in entry_points(group=EXPORTER_GROUP)}
    for name in names:
        if name != "otlp" and name not in known:
            report.add("exporter", FAILED, f"no installed package provides exporter {name!r}")
    if "otlp" in names:
        _otlp_endpoint(report, env)


def _otlp_endpoint(report: Report, env: Mapping[str, str]) -> None:
    protocol = otlp_protocol(env)
    if protocol not in _DEFAULT_ENDPOINTS:
        report.add(
            "otlp",
            FAILED,
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not 'grpc' or 'http/protobuf'",
        )
        return
    endpoint = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or _DEFAULT_ENDPOINTS[protocol]
    )
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    shown = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
    report.settings.update(otlp_protocol=protocol, otlp_endpoint=shown)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), _ENDPOINT_TIMEOUT_SECONDS):
            pass
    except OSError as exc:
        report.add("otlp", FAILED, f"{shown} does not accept connections: {exc.strerror or exc}")
        return
    report.add("otlp", OK, f"{shown} accepts connections ({protocol})")


def diagnose(database_url: str | None, env: Mapping[str, str]) -> Report:
    report = Report()
    settings = _settings_or_fail(report, database_url)
    if _saving(report, env) and settings is not None:
        _database(report, settings)
    _exporters(report, env)
    return report


@click.command("doctor")
@format_option("table", "json")
@database_url_option
@click.pass_context
def doctor(ctx: click.Context, output_format: str, database_url: str | None) -> None:
    """Check the database (reachable, table present, migration current) and the
    OTLP endpoint, print the effective settings (passwords masked); exit 1 if
    something is wrong.

    \b
    Examples:
      reec-otel doctor
      REEC_DATABASE_URL=postgresql+psycopg://app@db/app reec-otel doctor --format json
    """
    report = diagnose(database_url, os.environ)
    if output_format == "json":
        write_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        _print(report)
    ctx.exit(0 if report.ok else 1)


def _print(report: Report) -> None:
    from rich.markup import escape

    out = console()
    for key, value in report.settings.items():
        out.print(f"[bold]{key}[/]: {escape(str(value))}")
    out.print()
    for check in report.checks:
        out.print(f"{_MARKS[check.status]} {check.name}: {escape(check.detail)}")
