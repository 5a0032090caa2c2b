"""SIGTERM during a job, and exit with nothing reachable: rows and spans first, then a true exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.tcp_proxy import unused_loopback_port

ROOT = Path(__file__).resolve().parent.parent


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


LONG_JOB = textwrap.dedent(
    """
    import sys, time
    import reec_otel

    reec_otel.configure(application_name="terminated", handle_sigterm=True)

    def long_job(ctx):
        print("started", flush=True)
        time.sleep(60)
        return "never"

    reec_otel.Worker("long-job", run_function=long_job).execute()
    print("not reached", flush=True)
    """
)


def test_sigterm_during_a_job_records_it_as_failed_and_exits_as_terminated(
    backend: Backend, tmp_path: Path
) -> None:
    env = _environment(
        REEC_DATABASE_URL=backend.url,
        REEC_LOG_JOB_TABLE_NAME=backend.table_name,
        OTEL_TRACES_EXPORTER="console",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", LONG_JOB],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()

    assert child.returncode == 128 + signal.SIGTERM, stderr
    assert "not reached" not in stdout
    assert '"name": "long-job"' in stdout, "the span was exported before exit"
    assert "reec_otel.JobTerminated" in stdout
    rows = backend.rows()
    assert [r["state_job"] for r in rows] == ["Enqueued", "Processing", "Failed"]
    failed = rows[-1]
    assert failed["exception_type"] == "reec_otel.JobTerminated"
    assert "SIGTERM" in failed["exception"]
    assert failed["duration_ms"] > 0


def test_without_the_option_sigterm_keeps_its_default_action(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import signal, reec_otel
        reec_otel.configure(database_url="sqlite://", application_name="x")
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_environment()
    )
    assert done.stdout.strip() == "True", done.stderr


SHUTDOWN = textwrap.dedent(
    """
    import sys, time
    import reec_otel

    handle = reec_otel.configure(
        database_url="postgresql+psycopg://app:pw@127.0.0.1:{db_port}/test",
        application_name="unreachable",
        shutdown_timeout_millis=3000,
        spool_directory={spool!r},
    )
    for index in range(20):
        reec_otel.Worker(f"job-{{index}}", run_function=lambda ctx: "ok").execute()
    {ending}
    """
)


@pytest.mark.parametrize("ending", ["explicit", "at-exit"])
def test_shutdown_with_nothing_reachable_keeps_its_deadline_and_the_exit_code(
    ending: str, tmp_path: Path
) -> None:
    if ending == "explicit":
        code = (
            "started = time.monotonic(); finished = handle.shutdown(); "
            "print(finished, round(time.monotonic() - started, 2)); sys.exit(7)"
        )
    else:
        code = "print('leaving'); sys.exit(7)"
    script = SHUTDOWN.format(db_port=unused_loopback_port(), spool=str(tmp_path), ending=code)
    env = _environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{unused_loopback_port()}",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    after_exit = time.monotonic() - started

    assert done.returncode == 7, done.stderr
    if ending == "explicit":
        finished, seconds = done.stdout.split()
        assert finished == "False"
        assert float(seconds) < 3.0 + 1.5, "shutdown keeps its 3 s deadline (generous slack)"
    else:
        # Interpreter start and imports take their time too: the slack is generous.
        assert after_exit < 3.0 + 10, "the exit hook keeps its 3 s deadline"
    assert list(tmp_path.glob("*.spool")), "the rows wait in the spool for the next process"
