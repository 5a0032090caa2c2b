"""Retention at two table sizes: rows per second, and Python memory at its peak.

The claim measured: a cleanup holds one batch in memory whatever the table's
size, so the peak memory ratio between the sizes stays near 1 while the rows
deleted grow with the table. Each size gets a fresh table of its own (two
applications, half each), dropped afterwards.

    python benchmarks/retention.py --backend sqlite --rows 200000 2000000
    python benchmarks/retention.py --backend postgresql --url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from retention_data import load, make_runs

from reec_otel import CleanLogJobWorker, LogJobOptions, StateJob, log_job_table

DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def measure(url: str, rows: int) -> dict[str, float]:
    engine = create_engine(url)
    table = log_job_table(f"log_job_bench_{uuid.uuid4().hex[:10]}")
    table.create(engine)
    try:
        today = dt.datetime.now(dt.UTC).date()
        billing = make_runs("billing", rows // 2, today, seed=1)
        load(engine, table, billing + make_runs("shipping", rows // 2, today, seed=2))
        options = LogJobOptions(
            table_name=table.name,
            enable_clean=False,
            delete_days_by_state={StateJob.FAILED: 30, StateJob.SUCCEEDED: 3},
        )
        del billing
        cleaner = CleanLogJobWorker(database_url=url, application_name="billing", log_job=options)
        tracemalloc.start()
        started = time.perf_counter()
        result = cleaner.execute()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if cleaner.last_report is None:
            raise SystemExit(f"The cleanup failed: {result.exception}")
        deleted = cleaner.last_report.rows
        return {"rows": rows, "deleted": deleted, "seconds": seconds, "peak_kib": peak / 1024}
    finally:
        table.drop(engine)
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mariadb"), default="sqlite")
    parser.add_argument(
        "--url", help="database URL (default: a temporary SQLite file, or loopback)"
    )
    parser.add_argument("--rows", type=int, nargs=2, default=(200_000, 2_000_000))
    arguments = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for rows in arguments.rows:
            url = arguments.url or DEFAULT_URLS.get(arguments.backend)
            url = url or f"sqlite:///{Path(folder) / f'bench-{rows}.db'}"
            results.append(measure(url, rows))
            r = results[-1]
            print(
                f"{arguments.backend}: {r['rows']:>9,} rows, {r['deleted']:>9,} deleted in "
                f"{r['seconds']:6.1f} s ({r['deleted'] / r['seconds']:>8,.0f} rows/s), "
                f"peak Python memory {r['peak_kib']:7.0f} KiB"
            )
    small, large = results
    print(
        f"ratios large/small: table {large['rows'] / small['rows']:.1f}, "
        f"deleted {large['deleted'] / small['deleted']:.1f}, "
        f"peak memory {large['peak_kib'] / small['peak_kib']:.2f}"
    )


if __name__ == "__main__":
    main()
