"""Scale: cost per job and resident memory at 10 thousand to a million jobs.

Each run of a point is a fresh interpreter, so that memory is measured alone:
after a warm-up, the baseline is the resident set; the growth is the peak
resident set at the end minus that baseline. Jobs run in full mode (three
rows each) on a SQLite file, and once more with the database unreachable (a
loopback port nothing listens on) for the whole run, where rows wait in the
writer's bounded queue.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import Sizes, exporting_provider, rss_mb, unused_loopback_port

WARM_UP_JOBS = 2_000
# Runs per point, smallest first. A run of ten thousand jobs lasts half a
# second, where one disturbance of a shared machine shows; the median of five
# such runs is as steady as the single run of a million jobs, which lasts a minute.
RUNS = (5, 3, 1)


def _body(_ctx: Any) -> str:
    return "done"


def measure(jobs: int, url: str, wait: bool, spool_directory: str) -> dict[str, Any]:
    """Run *jobs* jobs in this process; the figures of one point."""
    import reec_otel

    provider = exporting_provider()
    handle = reec_otel.configure(
        database_url=url,
        application_name="bench",
        tracer_provider=provider,
        spool_directory=spool_directory,
    )
    worker = reec_otel.Worker("bench", run_function=_body)
    for _ in range(WARM_UP_JOBS):
        worker.execute()
    if wait:
        handle.force_flush(60_000)
    baseline, _ = rss_mb()
    cpu_start = time.thread_time_ns()
    wall_start = time.perf_counter_ns()
    for _ in range(jobs):
        worker.execute()
    wall = time.perf_counter_ns() - wall_start
    cpu = time.thread_time_ns() - cpu_start
    _, peak = rss_mb()
    flushed = handle.force_flush(600_000) if wait else False
    stats = handle.statistics()
    handle.shutdown(600_000 if wait else 0)
    return {
        "jobs": jobs,
        "us_per_job": cpu / jobs / 1000,
        "wall_us_per_job": wall / jobs / 1000,
        "rss_growth_mb": peak - baseline,
        "rows_written": stats.rows_written,
        "rows_dropped": stats.rows_dropped,
        "rows_spooled": stats.rows_spooled,
        "flushed": flushed,
    }


def _in_child(jobs: int, url: str, wait: bool, spool_directory: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        str(jobs),
        url,
        "1" if wait else "0",
        str(spool_directory),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3_600)
    if done.returncode != 0:
        raise RuntimeError(f"scale point {jobs} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    points = {}
    for label, jobs, runs in zip(("10k", "100k", "1m"), sizes.scale_counts, RUNS, strict=True):
        tries = [
            _in_child(
                jobs,
                f"sqlite:///{workdir / f'scale_{label}_{index}.db'}",
                True,
                workdir / f"spool_{label}_{index}",
            )
            for index in range(runs)
        ]
        points[label] = _summary(tries)
    down_url = f"postgresql+psycopg://bench@127.0.0.1:{unused_loopback_port()}/bench"
    down = _in_child(sizes.db_down_jobs, down_url, False, workdir / "spool_db_down")
    result: dict[str, Any] = {}
    for label, point in points.items():
        result[f"us_per_job_{label}"] = point["us_per_job"]
        result[f"rss_growth_mb_{label}"] = point["rss_growth_mb"]
    result["cost_ratio_1m_10k"] = result["us_per_job_1m"] / result["us_per_job_10k"]
    result["rss_growth_mb_db_down"] = down["rss_growth_mb"]
    result["us_per_job_db_down"] = down["us_per_job"]
    result["points"] = {**points, "db_down": down}
    return result


def _summary(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median cost stands for the point; memory is the largest growth of any."""
    ordered = sorted(tries, key=lambda point: point["us_per_job"])
    point = dict(ordered[(len(ordered) - 1) // 2])
    point["rss_growth_mb"] = max(t["rss_growth_mb"] for t in tries)
    point["runs"] = len(tries)
    point["us_per_job_of_each_run"] = [t["us_per_job"] for t in tries]
    return point


if __name__ == "__main__":
    jobs_arg, url_arg, wait_arg, spool_arg = sys.argv[1:5]
    print(json.dumps(measure(int(jobs_arg), url_arg, wait_arg == "1", spool_arg)))
