"""``reec-otel clean``: run one cleanup round now, from the command line.

Settings are read as everywhere else: ``--database-url`` over
``REEC_DATABASE_URL``, the table and the retention rules from the
``REEC_LOG_JOB_*`` variables. The round is a traced job like any other, and
the command never starts the cleanup scheduler.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

import reec_otel
from reec_otel._attributes import StateJob
from reec_otel._cli._common import DatabaseProblem, describe_database_error, query_engine
from reec_otel._errors import ConfigurationError
from reec_otel._retention import CleanLogJobWorker, ProgressFunction
from reec_otel._rules import parse_days
from reec_otel._settings import LogJobOptions, resolve_database_url

__all__ = ["clean"]

_FAILED_SHUTDOWN_MILLIS = 1_000


@click.command("clean")
@click.option(
    "--older-than",
    metavar="DAYS",
    help="Delete rows older than this (10, 10d or 2w), instead of the configured rules.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([state.value for state in StateJob], case_sensitive=False),
    help="Only runs whose final state is this one (repeatable).",
)
@click.option("--name", "names", multiple=True, help="Only runs of this job (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy URL of the database (default: REEC_DATABASE_URL).",
)
@click.option(
    "--app",
    "--application-name",
    "application_name",
    metavar="NAME",
    help="Whose rows to clean (default: REEC_APPLICATION_NAME, else the OTel service name).",
)
def clean(
    older_than: str | None,
    states: Sequence[str],
    names: Sequence[str],
    dry_run: bool,
    database_url: str | None,
    application_name: str | None,
) -> None:
    """Delete old LogJob rows of one application now, in batches.

    The rules are the configured ones (REEC_LOG_JOB_DELETE_DAYS and the
    per-state and per-name rules) unless --older-than replaces them. The round
    is recorded as a CleanLogJobWorker run; a round already running elsewhere
    for the application makes this one skip.

    \b
    Examples:
      reec-otel clean --dry-run
      reec-otel clean --older-than 30d --state Failed
      reec-otel clean --older-than 1d --name noisy-poller --app billing
    """
    try:
        days = None if older_than is None else parse_days(older_than, "--older-than")
        options = LogJobOptions.from_environment(os.environ)
        url = resolve_database_url(database_url, os.environ)
        # Fails early, and creates no SQLite file, when the database is not there.
        query_engine(url).dispose()
        handle = reec_otel.configure(
            database_url=url,
            application_name=application_name,
            # A dry run changes nothing: not even a record of itself.
            enable_global_db_save=not dry_run,
            log_job=dataclasses.replace(options, enable_clean=False),
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    # A round that failed most likely lost the database: its own rows then wait
    # in the spool rather than hold the command for the whole deadline.
    shutdown_millis = _FAILED_SHUTDOWN_MILLIS
    try:
        worker = CleanLogJobWorker(
            database_url=url,
            application_name=handle.application_name,
            log_job=options,
            older_than_days=days,
            states=list(states) or None,
            names=list(names) or None,
            dry_run=dry_run,
            handle=handle,
        )
        with _progress_bar(Console(stderr=True), dry_run) as progress:
            worker.progress = progress
            result = worker.execute()
        if worker.last_report is not None:
            shutdown_millis = handle.shutdown_timeout_millis
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        handle.shutdown(shutdown_millis)
    if worker.last_report is None:
        raise DatabaseProblem(f"The cleanup failed: {_describe(result.exception)}")
    click.echo(worker.last_report.message)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, SQLAlchemyError):
        return describe_database_error(exc)
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _progress_bar(console: Console, dry_run: bool) -> Iterator[ProgressFunction | None]:
    """A progress bar on a terminal; nothing when the output goes elsewhere."""
    if not console.is_terminal:
        yield None
        return
    columns = [
        TextColumn("Counting" if dry_run else "Deleting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("clean", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
        bar.update(task, total=bar.tasks[0].completed)
