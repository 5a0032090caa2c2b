"""The database goes away: rows wait in memory and in a spool file, then arrive once, in order.

PostgreSQL and MariaDB are reached through a loopback TCP proxy the test
breaks; SQLite is "away" while the directory of its file does not exist.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

import reec_otel
from reec_otel import StateJob, Worker
from reec_otel._writer import _is_transient
from tests.conftest import Backend, Tracing
from tests.tcp_proxy import TcpProxy


@dataclasses.dataclass
class Breakable:
    """A database the test can take away and give back."""

    url: str
    reader: Backend
    take_away: Callable[[], None]
    give_back: Callable[[], None]
    proxy: TcpProxy | None


@pytest.fixture
def breakable(backend: Backend, tmp_path: Path) -> Iterator[Breakable]:
    if backend.name == "sqlite":
        folder = tmp_path / "away"
        url = f"sqlite:///{folder / 'jobs.db'}"
        reader = Backend("sqlite", url, backend.table_name, create_engine(url))

        def take_away() -> None:
            assert not folder.exists(), "SQLite can only be away before its first connection"

        yield Breakable(url, reader, take_away, lambda: folder.mkdir(), None)
        reader.drop()
        reader.engine.dispose()
        return
    direct = make_url(backend.url)
    proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 0)
    url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield Breakable(url, backend, proxy.cut, proxy.restore, proxy)
    finally:
        proxy.close()


def _configure(
    db: Breakable, tracing: Tracing, tmp_path: Path, **options: object
) -> reec_otel.ReecOtel:
    settings: dict[str, object] = {
        "database_url": db.url,
        "application_name": "outages",
        "log_job": db.reader.log_job,
        "tracer_provider": tracing.provider,
        "flush_interval_seconds": 0.05,
        "spool_directory": tmp_path / "spool",
    }
    settings.update(options)
    return reec_otel.configure(**settings)  # type: ignore[arg-type]


def _run_jobs(count: int, prefix: str) -> list[tuple[str, str]]:
    """Run *count* jobs, every third failing; the (span_id, state) rows expected, in order."""
    expected = []
    for index in range(count):

        def run(ctx: reec_otel.JobContext, index: int = index) -> str:
            if index % 3 == 2:
                raise RuntimeError(f"{prefix} job {index} fails")
            return f"{prefix} job {index}"

        result = Worker(f"{prefix}-{index}", run_function=run).execute()
        final = StateJob.FAILED if index % 3 == 2 else StateJob.SUCCEEDED
        for state in (StateJob.ENQUEUED, StateJob.PROCESSING, final):
            expected.append((result.span_id, state.value))
    return expected


def _stored(db: Breakable) -> list[tuple[str, str]]:
    return [(r["span_id"], r["state_job"]) for r in db.reader.rows()]


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.02)


def test_rows_of_jobs_run_while_the_database_is_unreachable_arrive_once_in_order(
    breakable: Breakable, tracing: Tracing, tmp_path: Path
) -> None:
    breakable.take_away()
    handle = _configure(breakable, tracing, tmp_path)
    expected = _run_jobs(12, "away")

    _wait_for(lambda: handle.statistics().rows_spooled > 0)
    assert list((tmp_path / "spool").glob("*.spool")), "rows wait in a spool file"
    assert len(tracing.spans()) == 12, "spans are exported while the database is away"
    breakable.give_back()

    assert handle.force_flush(60_000)
    assert _stored(breakable) == expected
    statistics = handle.statistics()
    assert statistics.rows_dropped == 0
    assert statistics.rows_spooled == 0
    assert statistics.write_failures >= 1


def test_more_rows_than_one_spool_write_takes_arrive_once_in_order(
    breakable: Breakable, tracing: Tracing, tmp_path: Path
) -> None:
    breakable.take_away()
    handle = _configure(breakable, tracing, tmp_path)
    # 4 500 rows: the writer moves them to the spool 2 000 at a time.
    expected = _run_jobs(1_500, "many")

    _wait_for(lambda: handle.statistics().rows_spooled == len(expected))
    breakable.give_back()

    assert handle.force_flush(120_000)
    assert _stored(breakable) == expected
    assert handle.statistics().rows_dropped == 0


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_rows_of_jobs_run_during_an_outage_arrive_once_in_order(
    breakable: Breakable, tracing: Tracing, tmp_path: Path
) -> None:
    handle = _configure(breakable, tracing, tmp_path)
    before = _run_jobs(3, "before")
    assert handle.force_flush(30_000)

    breakable.take_away()
    during = _run_jobs(9, "during")
    _wait_for(lambda: handle.statistics().rows_spooled > 0)
    breakable.give_back()
    after = _run_jobs(3, "after")

    assert handle.force_flush(60_000)
    assert _stored(breakable) == before + during + after
    assert handle.statistics().rows_dropped == 0


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_commit_whose_answer_was_lost_is_retried_without_a_duplicate_row(
    breakable: Breakable, tracing: Tracing, tmp_path: Path
) -> None:
    handle = _configure(breakable, tracing, tmp_path)
    first = _run_jobs(1, "first")
    assert handle.force_flush(30_000)  # the table exists: its own commit is not the one lost

    assert breakable.proxy is not None
    breakable.proxy.lose_next_commit_answer()
    second = _run_jobs(3, "second")
    assert handle.force_flush(60_000)

    assert breakable.proxy.commit_answers_lost == 1
    assert _stored(breakable) == first + second
    assert handle.statistics().rows_rejected == 0


@pytest.mark.parametrize("spool_max_bytes", [0, 4096], ids=["no-spool", "small-spool"])
def test_when_memory_and_spool_are_full_failed_rows_are_kept_and_drops_counted_exactly(
    breakable: Breakable,
    tracing: Tracing,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spool_max_bytes: int,
) -> None:
    breakable.take_away()
    handle = _configure(
        breakable, tracing, tmp_path, max_queue_rows=6, spool_max_bytes=spool_max_bytes
    )
    with caplog.at_level(logging.WARNING, logger="reec_otel"):
        for index in range(10):
            Worker(f"ok-{index}", run_function=lambda ctx: "ok").execute()
        failed = [
            Worker(f"bad-{i}", is_light_execution=True, run_function=_fail).execute()
            for i in range(4)
        ]
        submitted = 10 * 3 + 4
        assert handle.statistics().rows_dropped > 0
        breakable.give_back()
        assert handle.force_flush(60_000)

    rows = breakable.reader.rows()
    stored_failures = {r["span_id"] for r in rows if r["state_job"] == "Failed"}
    assert stored_failures == {f.span_id for f in failed}, "every Failed row is kept"
    final = handle.statistics()
    assert final.rows_written == len(rows)
    assert final.rows_written + final.rows_dropped == submitted
    drop_warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drop_warnings) == 1, "the drop warning is not repeated for every row"


def _fail(ctx: reec_otel.JobContext) -> None:
    raise ValueError("light failure")


def test_rows_spooled_by_a_process_that_ended_are_written_by_the_next_one(
    sqlite_backend: Backend, tracing: Tracing, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    away = tmp_path / "away"
    script = textwrap.dedent(
        f"""
        import reec_otel
        handle = reec_otel.configure(
            database_url={f"sqlite:///{away / 'jobs.db'}"!r}, application_name="ended",
            spool_directory={str(spool)!r}, shutdown_timeout_millis=1000,
        )
        for i in range(5):
            reec_otel.Worker(f"ended-{{i}}", run_function=lambda ctx: "ok").execute()
        print(handle.shutdown(), handle.statistics().rows_dropped)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0"], "nothing was dropped, nothing written yet"
    assert list(spool.glob("*.spool"))

    away.mkdir()
    handle = reec_otel.configure(
        database_url=f"sqlite:///{away / 'jobs.db'}",
        application_name="next",
        tracer_provider=tracing.provider,
        spool_directory=spool,
        flush_interval_seconds=0.05,
    )
    Worker("next", run_function=lambda ctx: "ok").execute()
    assert handle.force_flush(30_000)
    reader = create_engine(f"sqlite:///{away / 'jobs.db'}")
    try:
        rows = Backend("sqlite", "", "log_job", reader).rows()
    finally:
        reader.dispose()
    assert [r["application_name"] for r in rows].count("ended") == 15
    assert [r["application_name"] for r in rows].count("next") == 3
    assert not list(spool.glob("*.spool")) or all(p.stat().st_size == 0 for p in spool.glob("*"))


def test_lock_conflicts_are_retried_and_never_taken_for_a_refused_row() -> None:
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    deadlock = OperationalError("INSERT", {}, Exception("Deadlock found when trying to get lock"))
    refused = IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed"))
    assert _is_transient(locked)
    assert _is_transient(deadlock)
    assert not _is_transient(refused)


def test_a_row_that_cannot_be_finished_is_refused_on_its_way_to_the_spool(
    breakable: Breakable, tracing: Tracing, tmp_path: Path
) -> None:
    # Other code ends a job span at an instant past the year 9999 while the
    # database is away: the rows around it wait in the spool as usual.
    breakable.take_away()
    handle = _configure(breakable, tracing, tmp_path)
    expected = _run_jobs(3, "before")
    odd = tracing.provider.get_tracer("other.code").start_span(
        "odd", attributes={"reec.job.name": "odd"}
    )
    odd.end(end_time=time.time_ns() * 1000)
    odd_id = f"{odd.get_span_context().span_id:016x}"
    expected += [(odd_id, "Enqueued"), (odd_id, "Processing")]
    expected += _run_jobs(3, "after")

    _wait_for(lambda: handle.statistics().rows_spooled == len(expected))
    breakable.give_back()
    assert handle.force_flush(60_000)
    assert _stored(breakable) == expected
    statistics = handle.statistics()
    assert statistics.rows_rejected == 1
    assert statistics.rows_dropped == 0 and statistics.rows_spooled == 0
