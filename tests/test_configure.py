"""configure(): settings and their sources, switches, handles and their lifecycle."""

from __future__ import annotations

import pytest

import reec_otel
from reec_otel import ConfigurationError, LifecycleError, LogJobOptions, Worker


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REEC_ENABLE_GLOBAL_DB_SAVE", "maybe"),
        ("REEC_LOG_JOB_IS_SAVE_DB", "2"),
        ("REEC_LOG_JOB_TABLE_NAME", "log_job; DROP TABLE users"),
        ("REEC_LOG_JOB_SCHEMA", "my-schema"),
        ("REEC_DATABASE_URL", "not a database url"),
    ],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable(
    monkeypatch, tracing, variable, value
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as caught:
        reec_otel.configure(tracer_provider=tracing.provider)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:s3cret-pw@db.internal:notaport/app",
        "nosuchdialect://app:s3cret-pw@db.internal/app",
    ],
)
def test_a_database_url_error_never_repeats_the_password(monkeypatch, tracing, url):
    monkeypatch.setenv("REEC_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as caught:
        reec_otel.configure(tracer_provider=tracing.provider)
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(caught.value.__cause__)


def test_an_argument_wins_over_the_environment(monkeypatch, tracing, sqlite_backend):
    monkeypatch.setenv("REEC_DATABASE_URL", "not a database url")
    monkeypatch.setenv("REEC_APPLICATION_NAME", "from-env")
    handle = reec_otel.configure(
        database_url=sqlite_backend.url,
        application_name="from-argument",
        tracer_provider=tracing.provider,
    )
    try:
        assert handle.application_name == "from-argument"
        assert handle.database_url.render_as_string() == sqlite_backend.url
    finally:
        handle.shutdown()


def test_the_environment_is_read_when_no_argument_is_given(monkeypatch, tracing, backend):
    monkeypatch.setenv("REEC_DATABASE_URL", backend.url)
    monkeypatch.setenv("REEC_APPLICATION_NAME", "env-app")
    monkeypatch.setenv("REEC_LOG_JOB_TABLE_NAME", backend.table_name)
    handle = reec_otel.configure(tracer_provider=tracing.provider)
    try:
        Worker("from-env", run_function=lambda ctx: None).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
    rows = backend.rows()
    assert len(rows) == 3
    assert {r["application_name"] for r in rows} == {"env-app"}


@pytest.mark.parametrize("variable", ["REEC_ENABLE_GLOBAL_DB_SAVE", "REEC_LOG_JOB_IS_SAVE_DB"])
@pytest.mark.parametrize("value", ["false", "0", "no", "OFF"])
def test_the_saving_switches_are_read_from_the_environment(monkeypatch, tracing, variable, value):
    monkeypatch.setenv(variable, value)
    handle = reec_otel.configure(tracer_provider=tracing.provider)
    try:
        assert not handle.writes_rows
        assert handle.database_url is None
    finally:
        handle.shutdown()


def test_log_job_options_given_in_code_win_over_the_environment(
    monkeypatch, tracing, sqlite_backend
):
    monkeypatch.setenv("REEC_LOG_JOB_IS_SAVE_DB", "false")
    handle = reec_otel.configure(
        database_url=sqlite_backend.url,
        log_job=LogJobOptions(table_name="custom_jobs"),
        tracer_provider=tracing.provider,
    )
    try:
        assert handle.writes_rows
        assert handle.table.name == "custom_jobs"
    finally:
        handle.shutdown()


@pytest.mark.parametrize("name", ["1table", "a b", "x" * 64, "log-job", "", "naïve"])
def test_table_and_schema_names_must_be_plain_identifiers(name):
    with pytest.raises(ConfigurationError, match="identifier"):
        LogJobOptions(table_name=name)
    with pytest.raises(ConfigurationError, match="identifier"):
        LogJobOptions(schema=name)


def test_configure_again_shuts_the_previous_handle_down(tracing, tmp_path):
    first = reec_otel.configure(
        database_url=f"sqlite:///{tmp_path / 'first.db'}", tracer_provider=tracing.provider
    )
    second = reec_otel.configure(
        database_url=f"sqlite:///{tmp_path / 'second.db'}", tracer_provider=tracing.provider
    )
    try:
        Worker("after-reconfigure", run_function=lambda ctx: None).execute()
        second.force_flush(10_000)
        assert first.state.value == "shut down"
        assert second.statistics().rows_written == 3
        assert first.statistics().rows_written == 0
        with pytest.raises(LifecycleError):
            first.force_flush()
    finally:
        second.shutdown()


def test_a_tracer_provider_that_is_not_the_sdk_s_is_refused():
    from opentelemetry.trace import NoOpTracerProvider

    with pytest.raises(ConfigurationError, match="TracerProvider"):
        reec_otel.configure(tracer_provider=NoOpTracerProvider())


def test_shutdown_leaves_a_provider_it_did_not_create_running(tracing, sqlite_backend):
    handle = reec_otel.configure(database_url=sqlite_backend.url, tracer_provider=tracing.provider)
    assert handle.shutdown()
    tracing.provider.get_tracer("app").start_span("still exported").end()
    assert len(tracing.spans("still exported")) == 1


def test_the_handle_repr_never_shows_the_password(tracing):
    handle = reec_otel.configure(
        database_url="postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/db",
        tracer_provider=tracing.provider,
    )
    try:
        assert "s3cret-pw" not in repr(handle)
    finally:
        handle.shutdown(1_000)


def test_without_any_name_rows_go_under_one_stable_name_and_it_says_so(tracing, caplog):
    # The SDK's fallback service name names the interpreter ("unknown_service:python3"),
    # which a script and the command line do not share.
    with caplog.at_level("WARNING", logger="reec_otel._configure"):
        handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)
    handle.shutdown()
    assert tracing.provider.resource.attributes["service.name"].startswith("unknown_service")
    assert handle.application_name == "unknown_service"
    assert "No application name is set" in caplog.text


def test_a_job_run_after_shutdown_still_runs_and_says_it_writes_no_rows(tracing, caplog):
    handle = reec_otel.configure(enable_global_db_save=False, tracer_provider=tracing.provider)
    handle.shutdown()
    with caplog.at_level("WARNING", logger="reec_otel._tracing"):
        result = Worker("late", run_function=lambda ctx: "ran").execute()
    assert result.message == "ran"
    assert "after reec_otel was shut down" in caplog.text
