"""``reec-otel run``: run a Python callable as one job."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import click

import reec_otel
from reec_otel import JobContext
from reec_otel._cli._common import Settings, UsageProblem, database_url_option


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``module:Class.method``) as a callable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageProblem(f"{spec!r} is not MODULE:FUNCTION (for example myapp.tasks:sync).")
    # As `python -m` does, the current directory comes first on the path.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageProblem(f"Cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageProblem(f"{module_name!r} has no attribute {attribute!r}.") from None
    if not callable(target):
        raise UsageProblem(f"{spec!r} is not callable.")
    return target  # type: ignore[no-any-return]


def run_function_for(function: Callable[..., Any], args: tuple[str, ...]) -> Any:
    """A Worker run function calling *function* with *args*, keeping it async if it is."""
    if inspect.iscoroutinefunction(function):

        async def run_async(_ctx: JobContext) -> Any:
            return await function(*args)

        return run_async

    def run(_ctx: JobContext) -> Any:
        return function(*args)

    return run


@click.command("run")
@click.argument("target", metavar="MODULE:FUNCTION")
@click.argument("args", nargs=-1, metavar="[ARG]...")
@click.option("--name", "name_job", help="The job's name (default: the function's name).")
@click.option("--light", is_flag=True, help="Record only a failure (light execution).")
@click.option("--user", "create_user", help="Who started the job, stored on every row.")
@click.option("--app", "application_name", help="Application name (default: as configure()).")
@database_url_option
@click.pass_context
def run_command(
    ctx: click.Context,
    target: str,
    args: tuple[str, ...],
    name_job: str | None,
    light: bool,
    create_user: str | None,
    application_name: str | None,
    database_url: str | None,
) -> None:
    """Import MODULE:FUNCTION and run FUNCTION(*ARGS) as one job.

    Arguments are passed as strings; the function may be async. Its return
    value is printed and stored as the row's message. Exit code 0 when the
    job succeeded, 1 when it failed.

    \b
    Examples:
      reec-otel run myapp.billing:sync_invoices --name sync-invoices
      reec-otel run myapp.reports:build 2026-01 eu-west
    """
    settings = Settings.resolve(database_url, application_name)
    function = load_callable(target)
    handle = reec_otel.configure(
        database_url=settings.url, application_name=settings.application_name
    )
    worker = reec_otel.Worker(
        name_job or str(getattr(function, "__qualname__", target)),
        is_light_execution=light,
        create_user=create_user,
        run_function=run_function_for(function, args),
    )
    try:
        result = worker.execute()
    finally:
        handle.shutdown()
    if result.succeeded:
        if result.message is not None:
            click.echo(result.message)
        ctx.exit(0)
    exc = result.exception
    click.echo(
        f"reec-otel: job {worker.name_job!r} failed: {type(exc).__name__}: {exc} "
        f"(trace {result.trace_identifier})",
        err=True,
    )
    ctx.exit(1)
