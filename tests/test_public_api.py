"""The public API is exactly what __all__ says, and each name is what it claims."""

from __future__ import annotations

import inspect

import reec_otel

PUBLIC_API = {
    "CleanLogJobWorker",
    "CleanReport",
    "ConfigurationError",
    "IWorker",
    "JobContext",
    "JobResult",
    "JobTerminated",
    "LifecycleError",
    "LogJob",
    "LogJobOptions",
    "LogJobSpanProcessor",
    "ReecOtel",
    "ReecOtelError",
    "StateJob",
    "Statistics",
    "Worker",
    "__version__",
    "configure",
    "job",
    "log_job_table",
    "redact_secrets",
}
# Names that the package is expected to grow into are listed above; the ones not
# built yet are named here, so that adding one means removing it from this set.
NOT_YET_BUILT: set[str] = set()


def test_all_lists_exactly_the_public_api():
    assert set(reec_otel.__all__) == PUBLIC_API - NOT_YET_BUILT
    assert len(reec_otel.__all__) == len(set(reec_otel.__all__))


def test_every_public_name_is_importable_and_documented():
    for name in reec_otel.__all__:
        value = getattr(reec_otel, name)
        if name != "__version__":
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_the_package_s_errors_share_one_base():
    assert issubclass(reec_otel.ConfigurationError, reec_otel.ReecOtelError)
    assert issubclass(reec_otel.ConfigurationError, ValueError)
    assert issubclass(reec_otel.LifecycleError, reec_otel.ReecOtelError)


def test_the_states_are_the_four_of_the_contract():
    assert [s.value for s in reec_otel.StateJob] == [
        "Enqueued",
        "Processing",
        "Succeeded",
        "Failed",
    ]


def test_the_table_has_the_columns_of_the_contract():
    assert [c.name for c in reec_otel.LogJob.__table__.columns] == [
        "id_log_job",
        "application_name",
        "name_job",
        "state_job",
        "trace_identifier",
        "span_id",
        "duration_ms",
        "exception_type",
        "exception",
        "inner_exception",
        "stack_trace",
        "data",
        "message",
        "create_user",
        "create_date",
        "create_date_only",
    ]
