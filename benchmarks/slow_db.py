"""A slow database: does a job wait when every statement takes 100 ms?

The writer's engine gets a listener that sleeps 100 ms before every statement
it sends, a real delay on the writer's connection. Job latency (one
``Worker.execute()``, full mode) is measured over five repetitions with the
slow database, alternating with five on an undelayed one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

import reec_otel
from benchmarks._common import Sizes, exporting_provider, median, percentile
from reec_otel import Worker

REPETITIONS = 5
STATEMENT_DELAY_SECONDS = 0.1


def _delay(*_args: Any) -> None:
    time.sleep(STATEMENT_DELAY_SECONDS)


def _body(ctx: Any) -> str:
    ctx.data["n"] = 1
    return "done"


def latencies_ms(url: str, jobs: int, slow: bool) -> tuple[list[float], int]:
    provider = exporting_provider()
    handle = reec_otel.configure(
        database_url=url, application_name="bench", tracer_provider=provider
    )
    if slow:
        event.listen(handle.processor.writer.engine, "before_cursor_execute", _delay)
    worker = Worker("bench", run_function=_body)
    worker.execute()
    samples = []
    for _ in range(jobs):
        started = time.perf_counter_ns()
        worker.execute()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    queued = handle.statistics().rows_queued
    # The slow writer is left to finish on its own: the latency is measured.
    handle.shutdown(0 if slow else 30_000)
    provider.shutdown()
    return samples, queued


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    fast: list[float] = []
    slow: list[float] = []
    queued_at_end = 0
    for repetition in range(REPETITIONS):
        fast += latencies_ms(
            f"sqlite:///{workdir / f'fast{repetition}.db'}", sizes.slow_db_jobs, False
        )[0]
        samples, queued = latencies_ms(
            f"sqlite:///{workdir / f'slow{repetition}.db'}", sizes.slow_db_jobs, True
        )
        slow += samples
        queued_at_end = max(queued_at_end, queued)
    result = {
        "fast_median_ms": median(fast),
        "fast_p99_ms": percentile(fast, 0.99),
        "slow_median_ms": median(slow),
        "slow_p99_ms": percentile(slow, 0.99),
        "rows_waiting_at_end": queued_at_end,
        "jobs_per_repetition": sizes.slow_db_jobs,
        "repetitions": REPETITIONS,
    }
    result["median_ratio"] = result["slow_median_ms"] / result["fast_median_ms"]
    result["p99_ratio"] = result["slow_p99_ms"] / result["fast_p99_ms"]
    return result
