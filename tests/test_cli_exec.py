"""``reec-otel exec``: a program run as one job, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from cli_support import Cli
from conftest import Backend


@pytest.fixture
def cli(backend: Backend) -> Cli:
    return Cli(backend.url, backend.table_name)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def final_row(backend: Backend, name_job: str) -> dict:
    rows = backend.rows(name_job=name_job)
    assert [r["state_job"] for r in rows][:2] == ["Enqueued", "Processing"]
    return rows[-1]


def test_a_successful_program_exits_0_and_records_a_succeeded_run(
    cli: Cli, backend: Backend
) -> None:
    done = cli.run(["exec"], "--name", "ok", "--user", "cron", "--", *python("print('hello')"))

    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n"
    rows = backend.rows(name_job="ok")
    assert [r["state_job"] for r in rows] == ["Enqueued", "Processing", "Succeeded"]
    assert {r["create_user"] for r in rows} == {"cron"}
    assert {r["application_name"] for r in rows} == {"cli-tests"}
    assert rows[-1]["data"]["exit_code"] == 0


def test_a_failing_program_gives_its_exit_code_and_a_failed_row_with_its_stderr_tail(
    cli: Cli, backend: Backend
) -> None:
    program = python("""
        import sys
        for n in range(100):
            print(f"noise {n}", file=sys.stderr)
        print("disk full", file=sys.stderr)
        sys.exit(3)
    """)
    done = cli.run(["exec"], "--name", "fails", "--", *program)

    assert done.returncode == 3
    assert "noise 0\n" in done.stderr and done.stderr.endswith("disk full\n")
    row = final_row(backend, "fails")
    assert row["state_job"] == "Failed"
    assert row["exception_type"] == "reec_otel._cli._exec.ProgramFailed"
    assert row["exception"].startswith("python")
    assert "exited with status 3" in row["exception"]
    assert row["exception"].endswith("noise 99\ndisk full")
    assert "noise 80" not in row["exception"]
    assert row["data"]["exit_code"] == 3


def test_output_passes_through_byte_for_byte(cli: Cli, backend: Backend) -> None:
    program = python("""
        import sys
        sys.stdout.buffer.write(b"\\x00\\xff binary\\r\\nno newline")
        sys.stderr.buffer.write(b"err \\xfe\\x01")
    """)
    done = cli.run(["exec"], "--name", "bytes", "--", *program, text=False)

    assert done.returncode == 0
    assert done.stdout == b"\x00\xff binary\r\nno newline"
    assert done.stderr == b"err \xfe\x01"


def test_a_program_killed_by_a_signal_exits_128_plus_the_signal(cli: Cli, backend: Backend) -> None:
    program = python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    done = cli.run(["exec"], "--name", "killed", "--", *program)

    assert done.returncode == 128 + signal.SIGKILL
    row = final_row(backend, "killed")
    assert row["state_job"] == "Failed"
    assert "killed by signal SIGKILL (9)" in row["exception"]


def test_a_program_that_cannot_start_exits_127_with_one_line_and_a_failed_row(
    cli: Cli, backend: Backend
) -> None:
    done = cli.run(["exec"], "--name", "missing", "--", "/nonexistent/backup.sh", "--all")

    assert done.returncode == 127
    assert done.stderr.strip().splitlines() == [
        "reec-otel: cannot start '/nonexistent/backup.sh': No such file or directory"
    ]
    row = final_row(backend, "missing")
    assert row["state_job"] == "Failed"
    assert row["exception_type"] == "builtins.FileNotFoundError"


def test_a_timeout_stops_the_program_exits_124_and_records_it(cli: Cli, backend: Backend) -> None:
    program = python("import time; time.sleep(60)")
    done = cli.run(["exec"], "--name", "slow", "--timeout", "0.5", "--", *program)

    assert done.returncode == 124
    row = final_row(backend, "slow")
    assert row["state_job"] == "Failed"
    assert "timed out after 0.5 s" in row["exception"]


def test_the_child_gets_the_job_span_as_traceparent(cli: Cli, backend: Backend) -> None:
    program = python("import os; print(os.environ['TRACEPARENT'])")
    done = cli.run(["exec"], "--name", "traced", "--", *program)

    assert done.returncode == 0, done.stderr
    version, trace_id, span_id, flags = done.stdout.strip().split("-")
    row = final_row(backend, "traced")
    assert version == "00"
    assert int(flags, 16) & 0x01  # sampled
    assert trace_id == row["trace_identifier"]
    assert span_id == row["span_id"]


def test_a_traceparent_given_to_reec_otel_is_continued(cli: Cli, backend: Backend) -> None:
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    env = cli.env(TRACEPARENT=f"00-{parent_trace}-00f067aa0ba902b7-01")
    program = python("import os; print(os.environ['TRACEPARENT'])")
    done = cli.run(["exec"], "--name", "nested", "--", *program, env=env)

    assert done.returncode == 0, done.stderr
    assert final_row(backend, "nested")["trace_identifier"] == parent_trace
    assert done.stdout.split("-")[1] == parent_trace
    assert done.stdout.split("-")[2] != "00f067aa0ba902b7"


@pytest.fixture
def long_child(cli: Cli) -> Iterator[subprocess.Popen[str]]:
    """reec-otel running a child that says when it is ready, then handles SIGTERM."""
    program = python("""
        import signal, sys, time
        def stop(signum, frame):
            print(f"child got {signal.Signals(signum).name}", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """)
    process = cli.popen(
        ["exec"], "--name", "long", "--", *program, stdout=subprocess.PIPE, start_new_session=True
    )
    with process:
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def test_sigterm_reaches_the_child_and_the_run_is_recorded_before_exit(
    long_child: subprocess.Popen[str], backend: Backend
) -> None:
    assert long_child.stdout is not None
    assert long_child.stdout.readline() == "ready\n"

    long_child.send_signal(signal.SIGTERM)
    rest = long_child.stdout.read()

    assert long_child.wait(30) == 7
    assert rest == "child got SIGTERM\n"
    row = final_row(backend, "long")
    assert row["state_job"] == "Failed"
    assert "exited with status 7" in row["exception"]
    with pytest.raises(ProcessLookupError):
        os.kill(row["data"]["pid"], 0)


def test_sigint_kills_a_child_that_does_not_handle_it_and_exits_130(
    cli: Cli, backend: Backend
) -> None:
    program = python("""
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print("ready", flush=True)
        time.sleep(60)
    """)
    with cli.popen(
        ["exec"], "--name", "interrupted", "--", *program, stdout=subprocess.PIPE
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 128 + signal.SIGINT
        finally:
            if process.poll() is None:
                process.kill()
    row = final_row(backend, "interrupted")
    assert row["state_job"] == "Failed"
    assert "killed by signal SIGINT (2)" in row["exception"]


def test_light_mode_records_only_a_failure(cli: Cli, backend: Backend) -> None:
    assert cli.run(["exec"], "--light", "--name", "quiet", "--", "true").returncode == 0
    assert cli.run(["exec"], "--light", "--name", "quiet", "--", "false").returncode == 1

    assert [r["state_job"] for r in backend.rows(name_job="quiet")] == ["Failed"]


def test_the_program_runs_when_the_database_is_unreachable() -> None:
    cli = Cli("postgresql+psycopg://postgres:sekrit@127.0.0.1:1/none", "log_job")
    program = python("import sys; print('still ran'); sys.exit(5)")
    done = cli.run(["exec"], "--name", "offline", "--", *program)

    assert done.returncode == 5
    assert done.stdout == "still ran\n"
    assert "cannot write to the database" in done.stderr
    assert "sekrit" not in done.stderr
    assert "Traceback" not in done.stderr
