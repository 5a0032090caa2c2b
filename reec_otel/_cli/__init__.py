"""The ``reec-otel`` command.

Each command lives in a module of its own and is registered in
:data:`COMMANDS` by one line, ``name: "module:attribute"``; a command's module
is imported only when that command runs, so ``reec-otel exec`` starts without
loading what the query commands need.

Errors are one line on standard error: exit code 2 for a usage or
configuration error, 1 for a database error. Commands that run a job exit with
the job's own code.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from reec_otel._version import __version__

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "exec": "reec_otel._cli._exec:exec_command",
    "run": "reec_otel._cli._run:run_command",
    "jobs": "reec_otel._cli._jobs:jobs",
    "db": "reec_otel._cli._db:db",
    "doctor": "reec_otel._cli._doctor:doctor",
    "clean": "reec_otel._cli._clean:clean",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, _, attribute = spec.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from reec_otel._cli._common import translate_errors

        with translate_errors():
            return super().invoke(ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reec-otel")
@click.option(
    "-v", "--verbose", count=True, help="Log more: -v for lifecycle (INFO), -vv for DEBUG."
)
def main(verbose: int) -> None:
    """Run programs and Python functions as traced jobs, query LogJob, migrate its table.

    Settings come from the same REEC_* and OTEL_* variables as configure();
    --database-url overrides REEC_DATABASE_URL.

    \b
    Examples:
      reec-otel exec --name nightly-backup -- tar czf /backup/etc.tgz /etc
      reec-otel jobs list --state Failed --since 24h
      reec-otel db upgrade
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="reec-otel: %(message)s")
