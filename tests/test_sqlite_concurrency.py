"""One SQLite file, the writer, a deleting cleanup and readers: nobody sees "database is locked"."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import create_engine, delete, func, select

import reec_otel
from reec_otel import Worker, log_job_table
from reec_otel._writer import create_database_engine
from tests.conftest import Tracing

JOBS = 150
READERS = 3


def test_writer_cleanup_and_readers_share_one_file_without_lock_errors(
    tmp_path: Path, tracing: Tracing
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    handle = reec_otel.configure(
        database_url=url,
        application_name="shared",
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.01,
        batch_rows=20,
    )
    table = log_job_table()
    Worker("first", run_function=lambda ctx: "ok").execute()
    assert handle.force_flush(30_000)  # the table exists before the others start

    errors: list[BaseException] = []
    stop = threading.Event()
    deleted = [0]

    def cleanup() -> None:
        # The retention job's way in: the package's own engine (WAL, busy timeout).
        engine = create_database_engine(url)
        try:
            while not stop.is_set():
                with engine.begin() as connection:
                    result = connection.execute(
                        delete(table).where(table.c.state_job == "Enqueued")
                    )
                    deleted[0] += result.rowcount
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    def read() -> None:
        # A plain reader, as a dashboard would open the file.
        engine = create_engine(url)
        try:
            while not stop.is_set():
                with engine.connect() as connection:
                    connection.execute(select(func.count()).select_from(table)).scalar_one()
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=cleanup)]
    threads += [threading.Thread(target=read) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        for index in range(JOBS):
            Worker(f"job-{index}", run_function=lambda ctx: "ok").execute()
        assert handle.force_flush(60_000)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        statistics = handle.statistics()
        handle.shutdown(10_000)

    assert errors == []
    assert statistics.write_failures == 0
    assert statistics.rows_rejected == 0
    assert statistics.rows_written == (JOBS + 1) * 3
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            kept = connection.execute(
                select(func.count()).select_from(table).where(table.c.state_job != "Enqueued")
            ).scalar_one()
    finally:
        engine.dispose()
    assert kept == (JOBS + 1) * 2
    assert deleted[0] >= 1
