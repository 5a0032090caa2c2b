"""Instructions per job on the job's thread: the hot path counted rather than timed.

Times on a shared machine move by tens of percent from run to run; the number
of instructions a job executes hardly moves. Each subject runs in a fresh
interpreter under valgrind's callgrind, once with few jobs and once with more,
and the difference divided by the difference in jobs is the count per job:
start-up and warm-up cancel out. The hash seed is fixed, so that a count
repeats to a few instructions. Callgrind counts each thread apart, and only
the job's (main) thread is kept, as the timed figures keep only its CPU time.

Spans are exported through a ``SimpleSpanProcessor`` and the do-nothing
exporter here, on the job's thread, for both the reference and the Worker: a
batch processor's thread would make the count depend on when the scheduler
runs it (a full queue takes another path). A count is not a time (a cache
miss costs more than an add), so this is the steady companion of
``hot_path``, not its replacement. Without valgrind the section is reported
as skipped; ``--quick`` skips it too, for it takes minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import Sizes, exporting_provider
from benchmarks.hot_path import bare_span_job, job_body

SUBJECTS = ("bare_span", "light_success", "full_success")
FEW, MANY = 1_000, 4_000
_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    if sizes.hot_path_rounds < 20:
        return {"skipped": "not counted by --quick: running under valgrind takes minutes"}
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed"}
    result: dict[str, Any] = {}
    for subject in SUBJECTS:
        few = _count(subject, FEW, workdir)
        many = _count(subject, MANY, workdir)
        result[f"{subject}_per_job"] = (many - few) / (MANY - FEW)
    result["light_ratio"] = result["light_success_per_job"] / result["bare_span_per_job"]
    result["full_ratio"] = result["full_success_per_job"] / result["bare_span_per_job"]
    return result


def _count(subject: str, jobs: int, workdir: Path) -> int:
    """Instructions the main thread of one child run executed."""
    folder = workdir / f"callgrind_{subject}_{jobs}"
    folder.mkdir()
    command = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={folder / 'out'}",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        subject,
        str(jobs),
        f"sqlite:///{folder / 'jobs.db'}",
    ]
    # A fixed hash seed: with a random one, dict layouts and so the count
    # move by about 1 % from run to run; with it, by a few instructions.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, check=False, timeout=1_800, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"counting {subject} failed:\n{done.stderr.decode(errors='replace')}")
    # Thread 1 is the main thread: the one that runs the jobs.
    (main_thread,) = folder.glob("out-01")
    match = _TOTALS.search(main_thread.read_bytes())
    if match is None:
        raise RuntimeError(f"no instruction total in {main_thread}")
    return int(match.group(1))


def _run_jobs(subject: str, jobs: int, url: str) -> None:
    import reec_otel

    provider = exporting_provider(on_the_span_s_thread=True)
    if subject == "bare_span":
        function = bare_span_job(provider.get_tracer("bench"))
    else:
        reec_otel.configure(
            database_url=url,
            application_name="bench",
            tracer_provider=provider,
        )
        worker = reec_otel.Worker(
            "bench", is_light_execution=subject == "light_success", run_function=job_body
        )
        function = worker.execute
    for _ in range(jobs):
        function()


if __name__ == "__main__":
    subject_arg, jobs_arg, url_arg = sys.argv[1:4]
    _run_jobs(subject_arg, int(jobs_arg), url_arg)
