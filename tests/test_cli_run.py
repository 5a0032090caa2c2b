"""``reec-otel run`` in real processes, and ``--help`` of every command."""

from __future__ import annotations

import textwrap
from pathlib import Path

import click
import pytest
from cli_support import Cli
from click.testing import CliRunner
from conftest import Backend

from reec_otel._cli import main


@pytest.fixture
def cli(backend: Backend) -> Cli:
    return Cli(backend.url, backend.table_name)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding an application module with jobs, as `python -m` would see it."""
    (tmp_path / "nightly_tasks.py").write_text(
        textwrap.dedent("""
            import asyncio

            def add(a, b):
                return f"{int(a) + int(b)} items"

            async def wait_and_echo(text):
                await asyncio.sleep(0)
                return text.upper()

            def broken(reason):
                raise RuntimeError(reason)
        """)
    )
    return tmp_path


def test_run_records_the_functions_result_as_the_message(
    cli: Cli, backend: Backend, project: Path
) -> None:
    done = cli.run(["run"], "nightly_tasks:add", "2", "40", "--name", "adder", cwd=str(project))
    async_done = cli.run(["run"], "nightly_tasks:wait_and_echo", "quiet", cwd=str(project))

    assert (done.returncode, done.stdout) == (0, "42 items\n")
    assert (async_done.returncode, async_done.stdout) == (0, "QUIET\n")
    assert backend.rows(name_job="adder", state_job="Succeeded")[0]["message"] == "42 items"
    assert backend.rows(name_job="wait_and_echo", state_job="Succeeded")[0]["message"] == "QUIET"


def test_a_failing_function_exits_1_with_one_line_and_a_failed_row(
    cli: Cli, backend: Backend, project: Path
) -> None:
    done = cli.run(["run"], "nightly_tasks:broken", "no disk", cwd=str(project))

    row = backend.rows(state_job="Failed")[0]
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"reec-otel: job 'broken' failed: RuntimeError: no disk (trace {row['trace_identifier']})"
    ]
    assert row["exception_type"] == "builtins.RuntimeError"
    assert "raise RuntimeError(reason)" in row["stack_trace"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nightly_tasks", "is not MODULE:FUNCTION"),
        ("no_such_module:main", "Cannot import 'no_such_module'"),
        ("nightly_tasks:missing", "has no attribute 'missing'"),
    ],
)
def test_a_target_that_cannot_be_loaded_is_a_usage_error(
    project: Path, tmp_path: Path, target: str, message: str
) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'jobs.db'}", "log_job")
    done = cli.run(["run"], target, cwd=str(project))

    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])

    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"Usage: main {' '.join(path)}" in result.output
