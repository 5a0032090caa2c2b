"""Edge cases of the command line, the write path, the sanitiser and retention.

Each test states a promise kept in a corner that is easy to get wrong: secrets
in odd spellings, durations too large for a date, a closed standard error,
process groups, a dropped table, locks shared by a server. A promise not yet
kept is marked ``xfail(strict=True)`` where it stands, so that the suite turns
red the day it is kept and the mark goes with the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli
from conftest import SERVER_URLS, Backend, Tracing, require_server
from sqlalchemy import create_engine, inspect, make_url, text

import reec_otel
from reec_otel import CleanLogJobWorker, LogJobOptions
from reec_otel._lock import clean_lock
from reec_otel._migrations import version_table_name

# -- the sanitiser ------------------------------------------------------------------


def test_redact_secrets_masks_a_password_in_a_python_dict_repr() -> None:
    # What an f-string of a settings dict puts into an exception message.
    text = "cannot connect with {'user': 'bob', 'password': 'hunter2'}"

    cleaned = reec_otel.redact_secrets(text)

    assert "hunter2" not in cleaned
    assert "'user': 'bob'" in cleaned


def test_redact_secrets_masks_the_credential_of_an_authorization_header_with_any_scheme() -> None:
    text = "request failed; headers sent: Authorization: Token 9f8e7d6c5b4a39281706"

    cleaned = reec_otel.redact_secrets(text)

    assert "9f8e7d6c5b4a39281706" not in cleaned


def test_redact_secrets_masks_a_quoted_password_whatever_characters_it_holds() -> None:
    leaked = []
    for sample in ('password="it\'s-hunter2"', 'token="ab\\"hunter2"', "secret='say \"hunter2\"'"):
        if "hunter2" in reec_otel.redact_secrets(sample):
            leaked.append(sample)

    assert leaked == []


# -- reec-otel jobs -------------------------------------------------------------------


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    cli = Cli(f"sqlite:///{tmp_path / 'jobs.db'}", "log_job")
    done = cli.run(["exec"], "--name", "seed", "--", sys.executable, "-c", "pass")
    assert done.returncode == 0, done.stderr
    return cli


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["jobs", "list"], "--since", "10000000d"),
        (["jobs", "list"], "--since", "99999999999w"),
        (["jobs", "stats"], "--since", "10000000d"),
        (["jobs", "stuck"], "--older-than", "10000000d"),
    ],
)
def test_a_duration_too_large_for_a_date_is_a_one_line_usage_error(
    sqlite_cli: Cli, command: list[str], option: str, value: str
) -> None:
    done = sqlite_cli.run(command, option, value)

    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr


# -- reec-otel exec -------------------------------------------------------------------


def test_exec_refuses_a_timeout_that_is_not_a_number(sqlite_cli: Cli, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    program = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]

    done = sqlite_cli.run(["exec"], "--name", "nan", "--timeout", "nan", "--", *program)

    assert done.returncode == 2, done.stderr
    assert not marker.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_exec_timeout_also_stops_the_processes_the_program_started(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    program = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open({str(pid_file)!r}, "w") as out:
            out.write(str(child.pid))
        child.wait()
    """)
    grandchild = None
    try:
        done = sqlite_cli.run(
            ["exec"], "--name", "tree", "--timeout", "1", "--", sys.executable, "-c", program
        )
        assert done.returncode == 124, done.stderr
        grandchild = int(pid_file.read_text())
        # Generous slack for the signal to land; the grandchild would sleep a minute.
        for _ in range(50):
            if not _alive(grandchild):
                break
            time.sleep(0.1)
        assert not _alive(grandchild)
    finally:
        if grandchild is not None and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


# -- reec-otel doctor -----------------------------------------------------------------


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_doctor_never_prints_a_password_given_as_a_url_query_parameter(
    server: str, tmp_path: Path
) -> None:
    require_server(server)
    url = SERVER_URLS[server]
    separator = "&" if "?" in url else "?"
    cli = Cli(f"{url}{separator}password=hunter2-in-query", "log_job_break_doctor")

    done = cli.run(["doctor"])

    output = done.stdout + done.stderr
    assert "database_url" in output
    assert "hunter2-in-query" not in output


# -- reec-otel db ---------------------------------------------------------------------


@pytest.fixture
def db_cli(backend: Backend) -> Iterator[Cli]:
    yield Cli(backend.url, backend.table_name)
    with backend.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {version_table_name(backend.table_name)}"))


def test_db_upgrade_recreates_a_logjob_table_that_was_dropped_after_an_earlier_upgrade(
    db_cli: Cli, backend: Backend
) -> None:
    first = db_cli.run(["db", "upgrade"])
    assert first.returncode == 0, first.stderr
    backend.drop()
    # `db current` now says: no table yet; 'reec-otel db upgrade' creates it.
    current = db_cli.run(["db", "current"])
    assert "upgrade' creates it" in current.stdout + current.stderr

    again = db_cli.run(["db", "upgrade"])

    assert again.returncode == 0, again.stderr
    assert inspect(backend.engine).has_table(backend.table_name)


# -- SIGTERM --------------------------------------------------------------------------

_ASYNC_JOB = """
import asyncio, sys
import reec_otel

reec_otel.configure(database_url=sys.argv[1], application_name="brk", handle_sigterm=True)


async def long_job(ctx):
    # Said once the job is suspended in its await, where a long job spends its time.
    asyncio.get_running_loop().call_soon(lambda: print("started", flush=True))
    await asyncio.sleep(60)


asyncio.run(reec_otel.Worker("async-long", run_function=long_job).execute_async())
"""


def test_sigterm_during_an_async_job_records_it_as_terminated_not_as_a_bare_cancellation(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    script = tmp_path / "async_job.py"
    script.write_text(_ASYNC_JOB)
    process = subprocess.Popen(
        [sys.executable, str(script), sqlite_backend.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()

    assert process.returncode == 128 + signal.SIGTERM
    final = sqlite_backend.rows(name_job="async-long")[-1]
    assert final["state_job"] == "Failed"
    assert final["exception_type"] == "reec_otel.JobTerminated"
    assert "SIGTERM" in final["exception"]


# -- the writer's spool -------------------------------------------------------------


def _spooled_rows(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.spool"))
        for line in path.read_text().splitlines()
    ]


def test_a_nearly_full_spool_keeps_the_failed_row_rather_than_rows_of_other_states(
    tracing: Tracing, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    handle = reec_otel.configure(
        # A file in a directory that does not exist: the database never answers.
        database_url=f"sqlite:///{tmp_path / 'missing' / 'jobs.db'}",
        application_name="brk-spool",
        tracer_provider=tracing.provider,
        spool_directory=str(spool),
        # Room for the five rows of other states (about 440 bytes each), not for
        # the Failed row with its stack trace as well.
        spool_max_bytes=2_700,
        flush_interval_seconds=0.05,
    )
    try:
        reec_otel.Worker("ok-job", run_function=lambda ctx: "fine").execute()

        def fails(ctx: reec_otel.JobContext) -> None:
            raise RuntimeError("the run that matters")

        reec_otel.Worker("failing-job", run_function=fails).execute()
    finally:
        handle.shutdown(2_000)

    kept = [(row["name_job"], row["state_job"]) for row in _spooled_rows(spool)]
    assert len(kept) >= 3, kept  # the cap held several rows: the set-up is as intended
    assert ("failing-job", "Failed") in kept


# -- the cleanup scheduler and the command line ---------------------------------------

_PROBE = """
import threading


def scheduler_threads():
    return ",".join(t.name for t in threading.enumerate() if "clean" in t.name) or "none"
"""


def test_the_command_line_never_starts_the_cleanup_scheduler(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "probe.py").write_text(_PROBE)

    ran = sqlite_cli.run(["run"], "probe:scheduler_threads", "--name", "probe", cwd=str(tmp_path))
    executed = subprocess.run(
        [
            sys.executable,
            "-m",
            "reec_otel",
            "-v",
            "exec",
            "--database-url",
            sqlite_cli.url,
            "--name",
            "probe",
            "--",
            sys.executable,
            "-c",
            "pass",
        ],
        capture_output=True,
        text=True,
        env=sqlite_cli.env(),
        timeout=120,
    )

    assert ran.returncode == 0, ran.stderr
    assert executed.returncode == 0, executed.stderr
    assert ran.stdout.strip() == "none"
    assert "cleanup scheduled" not in executed.stderr


# -- the cleanup lock -----------------------------------------------------------------


@pytest.fixture
def second_mariadb_database() -> Iterator[str]:
    """The URL of a MariaDB database of the test's own, beside the shared one."""
    require_server("mariadb")
    url = make_url(SERVER_URLS["mariadb"])
    name = f"reec_break_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def test_a_cleaner_on_one_mariadb_database_never_makes_a_cleaner_of_another_database_skip(
    second_mariadb_database: str,
) -> None:
    table_name = f"log_job_{uuid.uuid4().hex[:12]}"
    table = reec_otel.log_job_table(table_name)
    first = create_engine(SERVER_URLS["mariadb"])
    second = create_engine(second_mariadb_database)
    table.create(second)
    # A round running on the shared database holds its lock meanwhile.
    held = clean_lock(first, table, "brk-lock")
    assert held.acquire()
    try:
        worker = CleanLogJobWorker(
            database_url=second_mariadb_database,
            application_name="brk-lock",
            log_job=LogJobOptions(table_name=table_name, enable_clean=False),
        )
        result = worker.execute()
    finally:
        held.release()
        first.dispose()
        second.dispose()

    assert result.exception is None, result.exception
    assert worker.last_report is not None
    assert not worker.last_report.skipped, worker.last_report.message


def test_redact_secrets_masks_a_number_stored_under_a_secret_key_in_job_data(
    backend: Backend, tracing: Tracing
) -> None:
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="brk-sanitize",
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        sanitizer=reec_otel.redact_secrets,
        flush_interval_seconds=0.05,
    )
    try:

        def run(ctx: reec_otel.JobContext) -> str:
            ctx.data["user"] = "bob"
            ctx.data["password"] = 918273645
            return "done"

        reec_otel.Worker("numeric-secret", run_function=run).execute()
        assert handle.force_flush(10_000)
    finally:
        handle.shutdown(10_000)

    final = backend.rows(name_job="numeric-secret")[-1]
    assert final["data"]["user"] == "bob"
    assert "918273645" not in str(final["data"])
    exported = tracing.spans()[-1].attributes["reec.job.data"]
    assert "918273645" not in exported


def test_exec_with_its_own_standard_error_closed_still_runs_a_chatty_program_to_the_end(
    sqlite_cli: Cli,
) -> None:
    program = "import sys; sys.stderr.write('x' * 300_000); print('child done')"
    argv = sqlite_cli.argv(
        ["exec"], ["--name", "chatty", "--", sys.executable, "-c", program], None
    )
    # As a daemon started with file descriptor 2 closed runs it.
    process = subprocess.Popen(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", *argv],
        stdout=subprocess.PIPE,
        env=sqlite_cli.env(),
        text=True,
        start_new_session=True,
    )
    try:
        # The program needs a fraction of a second; this is slack, not a measure.
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert out == "child done\n"
    assert process.returncode == 0
