"""The sanitiser cleans the same text for the row, the span and its exception event."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import reec_otel
from reec_otel import JobContext, StateJob, Worker, redact_secrets
from tests.conftest import Backend, Tracing

SECRETS = ("hunter2", "abcdef123456", "k-98765", "s3cr3t", "tok-777")


@pytest.fixture
def sanitized(backend: Backend, tracing: Tracing) -> Iterator[reec_otel.ReecOtel]:
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="sanitized",
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
        sanitizer=redact_secrets,
    )
    yield handle
    handle.shutdown(10_000)


def _leaky_failure(ctx: JobContext) -> None:
    ctx.data["api_key"] = "k-98765"
    ctx.data["call"] = {"url": "https://svc/?password=s3cr3t&page=2"}
    try:
        raise ConnectionError("cannot reach postgresql://bob:hunter2@db.internal/app")
    except ConnectionError as cause:
        raise RuntimeError("upstream said: Authorization: Bearer abcdef123456") from cause


def test_secrets_reach_neither_the_row_nor_the_span_nor_its_exception_event(
    sanitized: reec_otel.ReecOtel, backend: Backend, tracing: Tracing
) -> None:
    failed = Worker("leaky", run_function=_leaky_failure, create_user="token=tok-777").execute()
    ok = Worker("leaky-ok", run_function=lambda ctx: "done with secret=s3cr3t").execute()
    assert (failed.state, ok.state) == (StateJob.FAILED, StateJob.SUCCEEDED)
    assert sanitized.force_flush(30_000)

    rows = backend.rows()
    stored = json.dumps([{k: str(v) for k, v in row.items()} for row in rows])
    spans = tracing.spans("leaky") + tracing.spans("leaky-ok")
    exported = json.dumps(
        [
            {
                "attributes": dict(span.attributes),
                "status": span.status.description,
                "events": [dict(e.attributes) for e in span.events],
            }
            for span in spans
        ]
    )
    for secret in SECRETS:
        assert secret not in stored, secret
        assert secret not in exported, secret
        assert secret not in (ok.message or "")
    (failure,) = [r for r in rows if r["state_job"] == "Failed"]
    assert "postgresql://bob:[REDACTED]@db.internal/app" in failure["inner_exception"]
    assert "Bearer [REDACTED]" in failure["exception"]
    assert "Bearer [REDACTED]" in failure["stack_trace"]
    assert failure["data"]["api_key"] == "[REDACTED]"
    assert failure["data"]["call"]["url"] == "https://svc/?password=[REDACTED]&page=2"
    assert failure["create_user"] == "token=[REDACTED]"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_failing_sanitizer_withholds_the_text_and_never_reaches_the_job(
    backend: Backend, tracing: Tracing
) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("sanitizer bug")

    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
        sanitizer=broken,
    )
    try:
        result = Worker("withheld", run_function=lambda ctx: "password=abc").execute()
        assert result.state is StateJob.SUCCEEDED
        assert handle.force_flush(30_000)
        (row,) = backend.rows(state_job="Succeeded")
        assert row["message"] == "[text withheld: the sanitizer failed]"
    finally:
        handle.shutdown(10_000)


def test_without_a_sanitizer_nothing_is_masked(
    configured: reec_otel.ReecOtel, backend: Backend
) -> None:
    Worker("plain", run_function=lambda ctx: "password=visible").execute()
    assert configured.force_flush(30_000)
    (row,) = backend.rows(state_job="Succeeded")
    assert row["message"] == "password=visible"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://bob:hunter2@db/x", "postgresql://bob:[REDACTED]@db/x"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [REDACTED]"),
        ("Authorization: Basic Ym9iOmh1bnRlcjI=", "Authorization: Basic [REDACTED]"),
        ("password=xyz&user=a", "password=[REDACTED]&user=a"),
        ('{"api_key": "k-1", "n": 1}', '{"api_key": "[REDACTED]", "n": 1}'),
        ("DB_PASSWORD='q w'", "DB_PASSWORD='[REDACTED]'"),
        ("client-secret: abc", "client-secret: [REDACTED]"),
        ("author=Bob, the bearer of news", "author=Bob, the bearer of news"),
    ],
)
def test_the_ready_sanitizer_masks_common_secrets_and_keeps_the_rest(
    text: str, expected: str
) -> None:
    assert redact_secrets(text) == expected
