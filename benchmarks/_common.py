"""What every benchmark shares: a do-nothing exporter, clocks, memory, databases."""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

SERVER_URLS = {
    "postgresql": os.environ.get(
        "REEC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("REEC_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does; ``--quick`` shrinks every count."""

    hot_path_jobs: int
    hot_path_rounds: int
    seed_pattern_jobs: int
    writer_jobs: int
    slow_db_jobs: int
    scale_counts: tuple[int, int, int]
    db_down_jobs: int


FULL = Sizes(
    hot_path_jobs=2_000,
    hot_path_rounds=30,
    seed_pattern_jobs=1_000,
    writer_jobs=30_000,
    slow_db_jobs=2_000,
    scale_counts=(10_000, 100_000, 1_000_000),
    db_down_jobs=300_000,
)
QUICK = Sizes(
    hot_path_jobs=500,
    hot_path_rounds=12,
    seed_pattern_jobs=100,
    writer_jobs=2_000,
    slow_db_jobs=200,
    scale_counts=(2_000, 5_000, 20_000),
    db_down_jobs=20_000,
)


class NullExporter(SpanExporter):
    """Accepts every span and sends it nowhere: the export pipeline minus the network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def exporting_provider(*, on_the_span_s_thread: bool = False) -> TracerProvider:
    """An SDK provider whose spans go to nowhere through a BatchSpanProcessor, or
    a SimpleSpanProcessor when they are to be exported on the span's own thread."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = NullExporter()
    if on_the_span_s_thread:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def per_call_us(function: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Microseconds per call: CPU time of this thread, and wall time."""
    cpu_start = time.thread_time_ns()
    wall_start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    wall = time.perf_counter_ns() - wall_start
    cpu = time.thread_time_ns() - cpu_start
    return cpu / calls / 1000, wall / calls / 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_mb() -> tuple[float, float]:
    """Resident memory now and at its peak, in MB, from /proc."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def unused_loopback_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique_table_name() -> str:
    return f"bench_log_job_{uuid.uuid4().hex[:10]}"


def server_unreachable(name: str) -> str | None:
    """None if the server answers, else why not."""
    engine = create_engine(SERVER_URLS[name], connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, ImportError) as exc:
        return f"{name} is unreachable: {getattr(exc, 'orig', None) or exc}"
    finally:
        engine.dispose()
    return None
