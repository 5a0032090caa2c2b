"""Strange things a job may raise or return each end as a stored Failed row and an exported span."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from opentelemetry.trace import StatusCode

import reec_otel
from reec_otel import JobContext, StateJob, Worker
from reec_otel._text import (
    MAX_DATA_CHARS,
    MAX_EXCEPTION_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_STACK_TRACE_CHARS,
)
from tests.conftest import Backend, Tracing


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class HoldsALock(Exception):
    """Built with an argument that cannot be pickled or copied."""

    def __init__(self) -> None:
        import threading

        super().__init__("holds a lock", threading.Lock())


class NeedsTwoArguments(Exception):
    """Its constructor does not match the arguments it stores."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


def _nul(ctx: JobContext) -> NoReturn:
    raise ValueError("before\x00after")


def _one_megabyte(ctx: JobContext) -> NoReturn:
    raise ValueError("m" * 1_048_576)


def _surrogates(ctx: JobContext) -> NoReturn:
    raise ValueError(b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape"))


def _unprintable(ctx: JobContext) -> NoReturn:
    raise Unprintable()


def _unpicklable(ctx: JobContext) -> NoReturn:
    raise HoldsALock()


def _mismatched_constructor(ctx: JobContext) -> NoReturn:
    raise NeedsTwoArguments(7, "bad state")


def _deep(ctx: JobContext) -> NoReturn:
    def recurse(depth: int) -> NoReturn:
        if depth == 0:
            raise RecursionError("5,000 frames down")
        recurse(depth - 1)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(6_000)
    try:
        recurse(5_000)
    finally:
        sys.setrecursionlimit(limit)


def _group_from_another(ctx: JobContext) -> NoReturn:
    try:
        raise KeyError("the cause")
    except KeyError as cause:
        raise ExceptionGroup("several", [ValueError("one"), TypeError("two")]) from cause


def _context_cycle(ctx: JobContext) -> NoReturn:
    first = ValueError("first")
    second = RuntimeError("second")
    first.__context__ = second
    second.__context__ = first
    raise first


def _odd_data(ctx: JobContext) -> NoReturn:
    ctx.data.update(
        nothing=None,
        nested={"a": {"b": {"c": [1, 2, {"d": None}]}}},
        mixed=[1, "two", 3.0, None, {"five": [5]}, b"bytes", object()],
        big="x" * 10_000_000,
    )
    raise ValueError("with odd data")


CASES: dict[str, Callable[[JobContext], Any]] = {
    "nul": _nul,
    "one-megabyte": _one_megabyte,
    "surrogates": _surrogates,
    "unprintable": _unprintable,
    "unpicklable": _unpicklable,
    "mismatched-constructor": _mismatched_constructor,
    "deep-traceback": _deep,
    "group-from-another": _group_from_another,
    "context-cycle": _context_cycle,
    "odd-data": _odd_data,
}

LIMITS = {
    "exception": MAX_EXCEPTION_CHARS,
    "inner_exception": MAX_EXCEPTION_CHARS,
    "stack_trace": MAX_STACK_TRACE_CHARS,
    "message": MAX_MESSAGE_CHARS,
}


def test_each_hostile_failure_is_stored_and_exported_and_the_next_job_runs(
    configured: reec_otel.ReecOtel, backend: Backend, tracing: Tracing
) -> None:
    results = {}
    for name, function in CASES.items():
        results[name] = Worker(name, run_function=function).execute()
        after = Worker(f"after-{name}", run_function=lambda ctx: "fine").execute()
        assert after.state is StateJob.SUCCEEDED, f"the job after {name} is unaffected"
    assert configured.force_flush(60_000)

    statistics = configured.statistics()
    assert statistics.rows_rejected == 0
    assert statistics.processor_errors == 0
    failed = {r["name_job"]: r for r in backend.rows(state_job="Failed")}
    assert sorted(failed) == sorted(CASES)
    succeeded = backend.rows(state_job="Succeeded")
    assert len(succeeded) == len(CASES)
    for name, result in results.items():
        assert result.state is StateJob.FAILED
        row = failed[name]
        assert row["span_id"] == result.span_id
        assert row["exception_type"], name
        assert row["stack_trace"], name
        for column, limit in LIMITS.items():
            assert row[column] is None or len(row[column]) <= limit, (name, column)
        (span,) = tracing.spans(name)
        assert span.status.status_code is StatusCode.ERROR
        (event,) = [e for e in span.events if e.name == "exception"]
        assert len(event.attributes["exception.message"]) <= MAX_EXCEPTION_CHARS
        assert len(event.attributes["exception.stacktrace"]) <= MAX_STACK_TRACE_CHARS
        assert row["exception"] == event.attributes["exception.message"]

    assert "\x00" not in failed["nul"]["exception"]
    assert "before\\x00after" in failed["nul"]["exception"]
    assert failed["one-megabyte"]["exception"].endswith("characters]")
    assert "\\udce9" in failed["surrogates"]["exception"]
    assert failed["unprintable"]["exception"].startswith("<unprintable")
    assert failed["mismatched-constructor"]["exception"] == "7: bad state"
    assert "RecursionError: 5,000 frames down" in failed["deep-traceback"]["stack_trace"]
    assert "KeyError: 'the cause'" in failed["group-from-another"]["stack_trace"]
    assert failed["group-from-another"]["inner_exception"] == "'the cause'"
    assert failed["context-cycle"]["inner_exception"] == "second"

    data = failed["odd-data"]["data"]
    text = data if isinstance(data, str) else json.dumps(data)
    assert len(text) <= MAX_DATA_CHARS + 64
    (odd_span,) = tracing.spans("odd-data")
    assert len(odd_span.attributes["reec.job.data"]) <= MAX_DATA_CHARS


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_small_odd_data_is_stored_as_the_same_json(
    configured: reec_otel.ReecOtel, backend: Backend
) -> None:
    def run(ctx: JobContext) -> None:
        ctx.data.update(nothing=None, nested={"a": {"b": [1, {"c": None}]}}, mixed=[1, "two", 3.5])

    Worker("odd", run_function=run).execute()
    assert configured.force_flush(30_000)
    (row,) = backend.rows(state_job="Succeeded")
    assert row["data"] == {
        "nothing": None,
        "nested": {"a": {"b": [1, {"c": None}]}},
        "mixed": [1, "two", 3.5],
    }
