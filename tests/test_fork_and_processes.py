"""Forked children write their own rows; a process ending right after its job keeps them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from sqlalchemy import event

import reec_otel
from reec_otel import StateJob, Worker
from reec_otel._writer import BatchWriter
from tests.conftest import Backend, Tracing

ROOT = Path(__file__).resolve().parent.parent


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a threaded process: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def test_a_forked_child_writes_only_its_own_rows_through_its_own_connections(
    backend: Backend, tracing: Tracing, tmp_path: Path
) -> None:
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="fork",
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=30,  # the parent's rows stay queued across the fork
        spool_directory=tmp_path,
    )
    writer = handle.processor.writer  # type: ignore[union-attr]
    assert isinstance(writer, BatchWriter)
    connected_in: list[int] = []
    event.listen(writer.engine, "connect", lambda *_: connected_in.append(os.getpid()))
    try:
        Worker("warm-up", run_function=lambda ctx: "ok").execute()
        assert handle.force_flush(30_000)  # the parent has a pooled connection now
        parent_job = Worker("parent", run_function=lambda ctx: "ok").execute()
        assert writer.statistics().rows_queued == 3

        # Fork while another thread holds the writer's lock.
        held, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            with writer._lock:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        held.wait(10)
        read, write = os.pipe()
        pid = _fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                os.close(read)
                signal.alarm(60)
                child_job = Worker("child", run_function=lambda ctx: "ok").execute()
                flushed = handle.force_flush(30_000)
                report = {
                    "flushed": flushed,
                    "span_id": child_job.span_id,
                    "written": writer.statistics().rows_written,
                    "connected_in_child": os.getpid() in connected_in,
                }
                os.write(write, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        release.set()
        holder.join()
        with os.fdopen(read) as pipe:
            report = json.loads(pipe.read() or "{}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert handle.force_flush(30_000)
    finally:
        handle.shutdown(10_000)

    assert report["flushed"] is True
    assert report["written"] == 3, "the child wrote its own three rows, not the parent's"
    assert report["connected_in_child"] is True, "the child opened its own connection"
    by_span: dict[str, list[str]] = {}
    for row in backend.rows():
        by_span.setdefault(row["span_id"], []).append(row["state_job"])
    for span_id in (parent_job.span_id, report["span_id"]):
        assert by_span[span_id] == ["Enqueued", "Processing", "Succeeded"]
    assert len(by_span) == 3


def test_pool_children_recycled_after_each_task_keep_their_rows(
    backend: Backend, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))}
    env.update(
        REEC_DATABASE_URL=backend.url,
        REEC_LOG_JOB_TABLE_NAME=backend.table_name,
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "process_pool.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = backend.rows()
    finals = [r for r in rows if r["state_job"] in ("Succeeded", "Failed")]
    assert len(finals) == 6, "one final row per task, each written by a child that then exited"
    assert sorted(r["state_job"] for r in finals).count(StateJob.FAILED.value) == 1
    assert len(rows) == 18
