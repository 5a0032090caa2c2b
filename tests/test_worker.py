"""The Worker: one span per run, outcomes, exceptions, trace identifiers, async."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid

import pytest
from opentelemetry.trace import StatusCode

import reec_otel
from reec_otel import JobContext, JobResult, StateJob, Worker, job
from reec_otel._attributes import NAME, STATE


@pytest.fixture
def spans(tracing):
    """Job spans go to the in-memory exporter; no rows are written."""
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)
    yield tracing
    handle.shutdown()


def only_span(spans, name):
    found = spans.spans(name)
    assert len(found) == 1, [s.name for s in spans.spans()]
    return found[0]


def exception_events(span):
    return [e for e in span.events if e.name == "exception"]


def test_a_successful_run_returns_its_message_and_ids_of_its_span(spans):
    result = Worker("greet", run_function=lambda ctx: "hello").execute()

    span = only_span(spans, "greet")
    assert result.state is StateJob.SUCCEEDED
    assert result.message == "hello"
    assert result.exception is None
    assert result.trace_identifier == f"{span.context.trace_id:032x}"
    assert result.span_id == f"{span.context.span_id:016x}"
    assert span.attributes[NAME] == "greet"
    assert span.attributes[STATE] == "Succeeded"
    assert span.status.status_code is not StatusCode.ERROR


def test_a_result_is_a_complete_frozen_job_result_like_one_built_by_hand(spans):
    ok = Worker("whole", run_function=lambda ctx: "fine").execute()
    failed = Worker("whole", run_function=lambda ctx: 1 / 0).execute()
    for result in (ok, failed):
        assert set(vars(result)) == {f.name for f in dataclasses.fields(JobResult)}
        assert result == dataclasses.replace(result)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.message = "changed"  # type: ignore[misc]
    assert ok == JobResult(
        StateJob.SUCCEEDED, ok.trace_identifier, ok.span_id, "fine", None, ok.duration_ms
    )
    assert isinstance(failed.exception, ZeroDivisionError) and failed.message is None
    assert ok.succeeded and not failed.succeeded


def test_a_run_s_context_is_a_complete_job_context_like_one_built_by_hand(spans):
    seen = []
    Worker("whole", create_user="ana", run_function=seen.append).execute()
    Worker("whole", run_function=seen.append).execute()
    first, second = seen
    for ctx in seen:
        assert set(vars(ctx)) == {f.name for f in dataclasses.fields(JobContext)}
        assert ctx == dataclasses.replace(ctx)
    assert first == JobContext(
        "whole", first.trace_identifier, first.span_id, first.span, "ana", {}
    )
    assert first.data is not second.data, "every run fills a dict of its own"
    assert second.create_user is None


def test_the_async_check_is_made_again_when_the_function_changes(spans):
    async def later(ctx):
        return "async"

    worker = Worker("switch", run_function=lambda ctx: "plain")
    assert worker.execute().message == "plain"
    worker.run_function = later
    assert worker.execute().message == "async"

    async def inside_a_loop():
        with pytest.raises(RuntimeError, match="execute_async"):
            worker.execute()
        worker.run_function = lambda ctx: "plain again"
        return worker.execute().message

    assert asyncio.run(inside_a_loop()) == "plain again"
    worker.run_function = None
    with pytest.raises(TypeError, match="no callable run_function"):
        worker.execute()


def test_a_result_that_is_not_text_is_stored_as_its_text(spans):
    assert Worker("count", run_function=lambda ctx: 42).execute().message == "42"
    assert Worker("nothing", run_function=lambda ctx: None).execute().message is None


def test_a_run_in_the_background_starts_a_fresh_trace_each_time(spans):
    first = Worker("bg", run_function=lambda ctx: None).execute()
    second = Worker("bg", run_function=lambda ctx: None).execute()

    assert first.trace_identifier != second.trace_identifier
    assert all(s.parent is None for s in spans.spans("bg"))
    assert len(first.trace_identifier) == 32
    assert first.trace_identifier == first.trace_identifier.lower()


def test_a_run_inside_a_request_span_continues_the_request_trace(spans):
    request_tracer = spans.provider.get_tracer("web")
    with request_tracer.start_as_current_span("GET /invoices") as request:
        result = Worker("in-request", run_function=lambda ctx: None).execute()

    job_span = only_span(spans, "in-request")
    assert result.trace_identifier == f"{request.get_span_context().trace_id:032x}"
    assert job_span.parent.span_id == request.get_span_context().span_id


@pytest.mark.parametrize(
    "given",
    [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
        uuid.UUID("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
    ],
)
def test_an_explicit_trace_identifier_is_continued(spans, given):
    result = Worker("explicit", trace_identifier=given, run_function=lambda ctx: None).execute()

    assert result.trace_identifier == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert only_span(spans, "explicit").context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


@pytest.mark.parametrize(
    "given",
    [
        "",
        "abc",
        "0" * 32,
        "g" * 32,
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6-3ce929d0e0e47366",
        17,
    ],
)
def test_a_trace_identifier_that_is_neither_hex_nor_uuid_is_refused(given):
    with pytest.raises(ValueError, match="trace_identifier"):
        Worker("bad", trace_identifier=given)


def test_a_failing_run_is_recorded_once_with_its_own_stack_trace(spans):
    def parse_settings(ctx):
        raise KeyError("retries")

    result = Worker("settings", run_function=parse_settings).execute()

    span = only_span(spans, "settings")
    events = exception_events(span)
    assert result.state is StateJob.FAILED
    assert isinstance(result.exception, KeyError)
    assert span.status.status_code is StatusCode.ERROR
    assert len(events) == 1
    assert events[0].attributes["exception.type"] == "builtins.KeyError"
    assert "in parse_settings" in events[0].attributes["exception.stacktrace"]
    assert span.attributes[STATE] == "Failed"


def test_the_exception_handler_receives_the_context_and_the_exception(spans):
    seen = []

    def handler(ctx, exc):
        seen.append((ctx.name_job, ctx.trace_identifier, exc))
        return "ignored"

    error = RuntimeError("disk full")

    def run(ctx):
        raise error

    result = Worker("handled", run_function=run, run_function_exception=handler).execute()

    assert seen == [("handled", result.trace_identifier, error)]
    assert result.exception is error
    assert result.message is None


def test_a_failing_handler_makes_an_exception_group_and_a_second_event(spans):
    def run(ctx):
        raise ValueError("job broke")

    def handler(ctx, exc):
        raise ConnectionError("pager unreachable")

    result = Worker("double", run_function=run, run_function_exception=handler).execute()

    events = exception_events(only_span(spans, "double"))
    assert result.state is StateJob.FAILED
    assert isinstance(result.exception, ExceptionGroup)
    assert [type(e) for e in result.exception.exceptions] == [ValueError, ConnectionError]
    assert [e.attributes["exception.type"] for e in events] == [
        "builtins.ValueError",
        "builtins.ConnectionError",
    ]
    assert events[1].attributes["reec.exception.source"] == "run_function_exception"


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_interrupts_are_recorded_as_failed_and_re_raised_unchanged(spans, kind):
    raised = kind()

    def run(ctx):
        raise raised

    handler_calls = []
    worker = Worker(
        "interrupted",
        run_function=run,
        run_function_exception=lambda ctx, exc: handler_calls.append(exc),
    )
    with pytest.raises(kind) as caught:
        worker.execute()

    span = only_span(spans, "interrupted")
    assert caught.value is raised
    assert handler_calls == []
    assert span.attributes[STATE] == "Failed"
    assert exception_events(span)[0].attributes["exception.escaped"] == "True"


def test_a_cancelled_async_run_is_recorded_as_failed_and_the_cancellation_propagates(spans):
    started = asyncio.Event()

    async def run(ctx):
        started.set()
        await asyncio.sleep(30)

    async def main():
        task = asyncio.create_task(Worker("cancelled", run_function=run).execute_async())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    span = only_span(spans, "cancelled")
    assert span.attributes[STATE] == "Failed"
    assert (
        exception_events(span)[0].attributes["exception.type"]
        == "asyncio.exceptions.CancelledError"
    )


def test_execute_runs_an_async_function_when_no_loop_is_running(spans):
    async def fetch(ctx):
        await asyncio.sleep(0)
        return "fetched"

    async def handler(ctx, exc):  # never called; only its kind matters
        raise AssertionError

    result = Worker("async-sync", run_function=fetch, run_function_exception=handler).execute()
    assert result.message == "fetched"


def test_execute_of_an_async_function_inside_a_running_loop_is_refused(spans):
    async def fetch(ctx):
        return "never"

    async def main():
        with pytest.raises(RuntimeError, match="execute_async"):
            Worker("refused", run_function=fetch).execute()

    asyncio.run(main())
    assert spans.spans("refused") == []


def test_execute_async_runs_plain_and_async_functions_and_handlers(spans):
    async def failing(ctx):
        raise OSError("gone")

    handled = []

    async def handler(ctx, exc):
        handled.append(exc)

    async def main():
        plain = await Worker("plain", run_function=lambda ctx: "inline").execute_async()
        failed = await Worker(
            "afail", run_function=failing, run_function_exception=handler
        ).execute_async()
        return plain, failed

    plain, failed = asyncio.run(main())
    assert plain.message == "inline"
    assert failed.state is StateJob.FAILED
    assert handled == [failed.exception]


def test_the_context_carries_the_run_identity_and_its_data_reaches_the_span(spans):
    seen: list[JobContext] = []

    def run(ctx):
        seen.append(ctx)
        ctx.data["rows"] = 3
        ctx.data["nested"] = {"ids": [1, None, "x"]}
        return "ok"

    result = Worker("ctx", create_user="ana", run_function=run).execute()

    ctx = seen[0]
    assert (ctx.name_job, ctx.create_user) == ("ctx", "ana")
    assert ctx.trace_identifier == result.trace_identifier
    assert ctx.span_id == result.span_id
    span = only_span(spans, "ctx")
    assert json.loads(span.attributes["reec.job.data"]) == {
        "rows": 3,
        "nested": {"ids": [1, None, "x"]},
    }
    assert span.attributes["reec.job.create_user"] == "ana"


def test_exception_notes_are_kept_in_the_data(spans):
    def run(ctx):
        error = ValueError("bad row")
        error.add_note("row 17 of invoices.csv")
        raise error

    Worker("notes", run_function=run).execute()
    data = json.loads(only_span(spans, "notes").attributes["reec.job.data"])
    assert data["exception_notes"] == ["row 17 of invoices.csv"]


def test_a_delay_is_waited_and_excluded_from_the_duration(spans):
    result = Worker(
        "later", delay=dt.timedelta(milliseconds=300), run_function=lambda ctx: None
    ).execute()

    job_span = only_span(spans, "later")
    processing = only_span(spans, "later processing")
    waited_ms = (processing.start_time - job_span.start_time) / 1e6
    assert waited_ms >= 300
    assert result.duration_ms < waited_ms
    assert processing.parent.span_id == job_span.context.span_id
    assert processing.attributes["reec.job.phase"] == "processing"


@pytest.mark.parametrize("delay", [-1, "5", float("nan"), float("inf"), True])
def test_a_delay_that_is_not_a_duration_is_refused(delay):
    with pytest.raises(ValueError, match="delay"):
        Worker("bad-delay", delay=delay)


def test_a_worker_needs_a_run_function(spans):
    with pytest.raises(TypeError, match="run_function"):
        Worker("empty").execute()


def test_a_subclass_may_define_the_functions_as_methods(spans):
    class Sync(Worker):
        def run_function(self, ctx):
            raise LookupError("no such account")

        def run_function_exception(self, ctx, exc):
            self.handled = exc

    worker = Sync("subclass")
    result = worker.execute()
    assert worker.handled is result.exception
    assert isinstance(worker, reec_otel.IWorker)


def test_the_job_decorator_returns_the_value_and_names_the_run_after_the_function(spans):
    @job
    def add(a, b):
        return a + b

    assert add(2, 3) == 5
    span = spans.spans()[-1]
    assert span.name.endswith("add")
    assert span.attributes[NAME] == add.__qualname__
    assert span.attributes["reec.job.message"] == "5"


def test_the_job_decorator_records_and_re_raises_an_exception(spans):
    @job(name="divide", create_user="cron")
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    span = only_span(spans, "divide")
    assert span.attributes[STATE] == "Failed"
    assert span.attributes["reec.job.create_user"] == "cron"


def test_the_job_decorator_keeps_async_functions_async(spans):
    @job(name="tick")
    async def tick(n):
        await asyncio.sleep(0)
        return n * 2

    assert asyncio.iscoroutinefunction(tick)
    assert asyncio.run(tick(4)) == 8
    assert only_span(spans, "tick").attributes[STATE] == "Succeeded"


def test_job_result_is_immutable_and_says_whether_it_succeeded():
    result = JobResult(StateJob.FAILED, "a" * 32, "b" * 16)
    assert not result.succeeded
    with pytest.raises(AttributeError):
        result.state = StateJob.SUCCEEDED  # type: ignore[misc]
