"""LogJob rows built directly, a sink that keeps rows, and one job span through a writer."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from reec_otel import LogJobSpanProcessor
from reec_otel import _attributes as attrs
from reec_otel._writer import BatchWriter


def make_row(**overrides: Any) -> dict[str, Any]:
    """A complete, valid row of a fresh run; *overrides* replace any column."""
    created = overrides.get("create_date", dt.datetime.now(dt.UTC))
    row: dict[str, Any] = {
        "application_name": "tests",
        "name_job": "direct",
        "state_job": "Succeeded",
        "trace_identifier": uuid.uuid4().hex,
        "span_id": uuid.uuid4().hex[:16],
        "duration_ms": 1.5,
        "exception_type": None,
        "exception": None,
        "inner_exception": None,
        "stack_trace": None,
        "data": None,
        "message": "m",
        "create_user": None,
        "create_date": created,
        "create_date_only": created.date(),
    }
    row.update(overrides)
    return row


class ListSink:
    """A row sink (see LogJobSpanProcessor's ``writer``) that keeps what it is given."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def submit(self, row: Any) -> bool:
        self.rows.append(row)
        return True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        return True


def run_one_job_span(writer: BatchWriter) -> None:
    """One job span of other code through a processor writing to *writer*, flushed."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(LogJobSpanProcessor(writer=writer, application_name="sinks"))
    try:
        provider.get_tracer("t").start_span("j", attributes={attrs.NAME: "j"}).end()
        assert writer.force_flush(5_000)
    finally:
        provider.shutdown()
