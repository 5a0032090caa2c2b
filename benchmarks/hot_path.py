"""Hot path: what a job costs on its own thread, next to a bare SDK span.

The reference is the same function in a bare span, from a provider with a
BatchSpanProcessor and a do-nothing exporter, carrying the attributes a
Worker's span carries. The Worker runs on an identical provider that also has
reec_otel's span processor, writing to a SQLite file. Short rounds of each
subject alternate, so that a noisy machine disturbs all of them alike; the
figure is the fastest round (as ``timeit`` advises: slower rounds measure
the other processes), the median round is reported beside it. Times are CPU
time of the job's thread (the writer's thread is not the job's cost); wall
times are reported too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import reec_otel
from benchmarks._common import Sizes, exporting_provider, median, per_call_us
from reec_otel import JobContext, LogJob, Worker
from reec_otel import _attributes as attrs


def job_body(_ctx: Any = None) -> str:
    return "done"


def failing_body(_ctx: JobContext) -> str:
    raise ValueError("the job failed")


def bare_span_job(tracer: Any) -> Any:
    """One job as a bare span: the Worker's attributes, no Worker."""

    def run() -> None:
        start = {attrs.NAME: "bench", attrs.LIGHT: True}
        with tracer.start_as_current_span("bench", attributes=start) as span:
            began = time.perf_counter_ns()
            message = job_body()
            span.set_attributes(
                {
                    attrs.STATE: "Succeeded",
                    attrs.DURATION_MS: (time.perf_counter_ns() - began) / 1e6,
                    attrs.MESSAGE: message,
                }
            )

    return run


def seed_pattern_job(engine: Any) -> Any:
    """One job the way the original library runs it: an ORM insert and commit per state."""

    def run() -> None:
        trace_id, span_id = "0" * 31 + "1", f"{time.perf_counter_ns():016x}"[-16:]
        with Session(engine) as session:
            for state in ("Enqueued", "Processing"):
                session.add(_orm_row(state, trace_id, span_id))
                session.commit()
            began = time.perf_counter_ns()
            message = job_body()
            row = _orm_row("Succeeded", trace_id, span_id)
            row.duration_ms = (time.perf_counter_ns() - began) / 1e6
            row.message = message
            session.add(row)
            session.commit()

    return run


def _orm_row(state: str, trace_id: str, span_id: str) -> LogJob:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return LogJob(
        application_name="bench",
        name_job="bench",
        state_job=state,
        trace_identifier=trace_id,
        span_id=span_id,
        create_date=now,
        create_date_only=now.date(),
    )


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    database = workdir / "hot_path.db"
    url = f"sqlite:///{database}"
    reference_provider = exporting_provider()
    job_provider = exporting_provider()
    handle = reec_otel.configure(
        database_url=url, application_name="bench", tracer_provider=job_provider
    )
    subjects = {
        "bare_call": lambda: job_body(None),
        "bare_span": bare_span_job(reference_provider.get_tracer("bench")),
        "light_success": Worker("bench", is_light_execution=True, run_function=job_body).execute,
        "full_success": Worker("bench", run_function=job_body).execute,
        "light_failure": Worker(
            "bench", is_light_execution=True, run_function=failing_body
        ).execute,
    }
    for subject in subjects.values():  # warm caches, tables and threads
        per_call_us(subject, 200)
    handle.force_flush(60_000)
    cpu: dict[str, list[float]] = {name: [] for name in subjects}
    wall: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(sizes.hot_path_rounds):
        for name, subject in subjects.items():
            cpu_us, wall_us = per_call_us(subject, sizes.hot_path_jobs)
            cpu[name].append(cpu_us)
            wall[name].append(wall_us)
            # Rows queued by one subject are written before the next one runs.
            handle.force_flush(120_000)
    dropped = handle.statistics().rows_dropped
    handle.shutdown(60_000)
    reference_provider.shutdown()
    job_provider.shutdown()

    engine = create_engine(url)
    seed = seed_pattern_job(engine)
    per_call_us(seed, 20)
    seed_cpu, seed_wall = per_call_us(seed, sizes.seed_pattern_jobs)
    engine.dispose()

    result: dict[str, Any] = {f"{name}_us": min(values) for name, values in cpu.items()}
    result["seed_pattern_us"] = seed_wall
    result["light_ratio"] = result["light_success_us"] / result["bare_span_us"]
    result["full_ratio"] = result["full_success_us"] / result["bare_span_us"]
    result["median"] = {f"{name}_us": median(values) for name, values in cpu.items()}
    result["median"]["light_ratio"] = (
        result["median"]["light_success_us"] / result["median"]["bare_span_us"]
    )
    result["median"]["full_ratio"] = (
        result["median"]["full_success_us"] / result["median"]["bare_span_us"]
    )
    result["wall"] = {f"{name}_us": min(values) for name, values in wall.items()}
    result["wall"]["seed_pattern_us"] = seed_wall
    result["seed_pattern_cpu_us"] = seed_cpu
    result["rows_dropped"] = dropped
    result["jobs_per_round"] = sizes.hot_path_jobs
    result["rounds"] = sizes.hot_path_rounds
    return result
