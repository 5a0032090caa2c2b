"""``reec-otel clean``: the command object, a real process, and a real terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest
from click.testing import CliRunner
from retention_data import load, make_run

import reec_otel._configure
from reec_otel import StateJob, log_job_table
from reec_otel._cli._clean import clean

S, F = StateJob.SUCCEEDED, StateJob.FAILED
# The command as installed: the reec-otel group dispatching to "clean".
CLEAN = [sys.executable, "-m", "reec_otel", "clean"]


@pytest.fixture
def history(backend):
    """Old and recent runs of billing, and an old run of shipping."""
    runs = {
        "old_sync_failed": make_run("billing", "sync", F, 12),
        "old_report_failed": make_run("billing", "report", F, 12),
        "old_sync_succeeded": make_run("billing", "sync", S, 12),
        "recent": make_run("billing", "sync", S, 1),
        "shipping": make_run("shipping", "sync", S, 30),
    }
    table = log_job_table(backend.table_name)
    table.create(backend.engine)
    load(backend.engine, table, list(runs.values()))
    return runs


def _spans(backend, application_name="billing"):
    rows = backend.rows(application_name=application_name)
    return {r["span_id"] for r in rows if r["name_job"] != "CleanLogJobWorker"}


def _environment(backend):
    return {"REEC_LOG_JOB_TABLE_NAME": backend.table_name, "REEC_APPLICATION_NAME": "billing"}


def test_a_dry_run_prints_the_count_and_deletes_nothing(backend, history):
    before = _spans(backend)

    result = CliRunner().invoke(
        clean, ["--dry-run", "--database-url", backend.url], env=_environment(backend)
    )

    assert result.exit_code == 0, result.output
    assert "Would delete 9 LogJob rows of application 'billing'" in result.output
    assert _spans(backend) == before
    assert _spans(backend, "shipping") == {history["shipping"].span_id}


def test_older_than_state_and_name_choose_the_rows_that_go(backend, history):
    arguments = ["--older-than", "5d", "--state", "failed", "--name", "sync"]

    result = CliRunner().invoke(
        clean, [*arguments, "--database-url", backend.url], env=_environment(backend)
    )

    assert result.exit_code == 0, result.output
    assert "Deleted 3 LogJob rows" in result.output
    gone = history["old_sync_failed"].span_id
    assert _spans(backend) == {r.span_id for r in history.values()} - {
        gone,
        history["shipping"].span_id,
    }


def test_the_database_url_comes_from_reec_database_url_when_not_given(backend, history):
    environment = _environment(backend) | {"REEC_DATABASE_URL": backend.url}

    environment.pop("REEC_APPLICATION_NAME")

    result = CliRunner().invoke(clean, ["--app", "billing"], env=environment)

    assert result.exit_code == 0, result.output
    assert "Deleted 9 LogJob rows" in result.output
    assert _spans(backend) == {history["recent"].span_id}


def test_the_command_never_starts_the_cleanup_scheduler(backend, history, monkeypatch):
    started = []

    def spy(handle):
        scheduler = real_start(handle)
        started.append(scheduler)
        return scheduler

    real_start = reec_otel._configure.start_clean_scheduler
    monkeypatch.setattr(reec_otel._configure, "start_clean_scheduler", spy)
    environment = _environment(backend) | {"REEC_LOG_JOB_ENABLE_CLEAN": "true"}

    result = CliRunner().invoke(clean, ["--database-url", backend.url], env=environment)

    assert result.exit_code == 0, result.output
    assert started == [None]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--older-than", "ten"], "--older-than must be a number of days such as 10, 10d or 2w"),
        (["--state", "Stuck"], "'Stuck' is not one of"),
    ],
)
def test_a_bad_option_is_a_usage_error(sqlite_backend, arguments, message):
    result = CliRunner().invoke(clean, [*arguments, "--database-url", sqlite_backend.url])

    assert result.exit_code == 2
    assert message in result.output


def test_an_unreachable_database_is_a_one_line_error_with_exit_code_1():
    # Nothing listens on port 1 of the loopback address: the connection is refused at once.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"

    result = CliRunner().invoke(clean, ["--database-url", url, "--app", "billing"])

    assert result.exit_code == 1
    assert result.output.startswith("Error: The cleanup failed: Database error: OperationalError")
    assert len(result.output.strip().splitlines()) == 1


def test_the_command_runs_in_a_process_of_its_own(backend, history):
    completed = subprocess.run(
        [*CLEAN, "--older-than", "10", "--database-url", backend.url],
        env=os.environ | _environment(backend),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("Deleted 9 LogJob rows of application 'billing'")
    assert _spans(backend) == {history["recent"].span_id}
    (run,) = backend.rows(name_job="CleanLogJobWorker", state_job="Succeeded")
    assert run["message"] == completed.stdout.strip()


def test_a_terminal_shows_a_progress_bar_and_the_count_at_the_end(backend, history):
    leader, follower = pty.openpty()
    environment = os.environ | _environment(backend) | {"TERM": "xterm-256color", "COLUMNS": "100"}
    with subprocess.Popen(
        [*CLEAN, "--database-url", backend.url],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=environment,
    ) as process:
        os.close(follower)
        screen = _read_all(leader)
        assert process.wait(120) == 0, screen
    os.close(leader)

    assert "Deleting" in screen
    assert "━" in screen
    assert "9/9" in screen
    assert "Deleted 9 LogJob rows of application 'billing'" in screen


def _read_all(descriptor: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_a_dry_run_writes_nothing_and_makes_no_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))}
    done = subprocess.run(
        [*CLEAN, "--dry-run", "--database-url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert not (tmp_path / "absent.db").exists()


def test_a_dry_run_records_no_run_of_its_own(backend, history):
    before = len(backend.rows())
    done = subprocess.run(
        [*CLEAN, "--dry-run", "--older-than", "1w", "--database-url", backend.url],
        env=os.environ | _environment(backend),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Would delete" in done.stdout
    assert len(backend.rows()) == before
