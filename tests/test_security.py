"""Names are validated before any SQL; passwords never leave the URL they were given in."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

import reec_otel
from reec_otel import ConfigurationError, LogJobOptions, Worker, log_job_table
from tests.conftest import Backend, Tracing
from tests.tcp_proxy import unused_loopback_port

PASSWORD = "pa55-w0rd-never-shown"


@pytest.mark.parametrize(
    "name", ["log_job; DROP TABLE x", "log job", "1log", "log-job", "", "x" * 64, "naïve"]
)
def test_a_table_or_schema_name_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        LogJobOptions(table_name=name)
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        LogJobOptions(schema=name)
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        log_job_table(name)


def test_a_bad_table_name_in_the_environment_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REEC_LOG_JOB_TABLE_NAME", "jobs;--")
    with pytest.raises(ConfigurationError, match="REEC_LOG_JOB_TABLE_NAME"):
        reec_otel.configure(database_url="sqlite://")


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_password_in_the_database_url_appears_in_no_log_error_or_statistics(
    scheme: str, tracing: Tracing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = unused_loopback_port()
    url = f"{scheme}://app:{PASSWORD}@127.0.0.1:{port}/test"
    with caplog.at_level(logging.DEBUG):
        handle = reec_otel.configure(
            database_url=url,
            tracer_provider=tracing.provider,
            flush_interval_seconds=0.05,
            spool_directory=tmp_path,
        )
        Worker("guarded", run_function=lambda ctx: "ok").execute()
        assert not handle.force_flush(1_500)
        statistics = handle.statistics()
        described = repr(handle)
        handle.shutdown(1_000)
    assert statistics.write_failures >= 1
    assert statistics.last_error
    assert PASSWORD not in caplog.text
    assert "cannot write to the database" in caplog.text
    assert PASSWORD not in repr(statistics)
    assert PASSWORD not in described
    spooled = "".join(p.read_text() for p in tmp_path.rglob("*.spool"))
    assert PASSWORD not in spooled
    assert not any(PASSWORD in str(path) for path in tmp_path.rglob("*"))


def test_a_malformed_url_with_a_password_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigurationError) as raised:
        reec_otel.configure(database_url=f"not a url :{PASSWORD}@")
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_rows_for_a_schema_that_does_not_exist_wait_until_it_is_created(
    backend: Backend, tracing: Tracing, tmp_path: Path
) -> None:
    schema = f"reec_missing_{uuid.uuid4().hex[:8]}"
    options = LogJobOptions(table_name=backend.table_name, schema=schema)
    handle = reec_otel.configure(
        database_url=backend.url,
        log_job=options,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
        spool_directory=tmp_path,
    )
    try:
        Worker("schemaless", run_function=lambda ctx: "ok").execute()
        assert not handle.force_flush(1_000)
        waiting = handle.statistics()
        assert waiting.rows_rejected == 0
        assert waiting.write_failures >= 1
        with backend.engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        assert handle.force_flush(30_000)
        table = log_job_table(backend.table_name, schema)
        with backend.engine.connect() as connection:
            states = [r.state_job for r in connection.execute(table.select())]
        assert states == ["Enqueued", "Processing", "Succeeded"]
    finally:
        handle.shutdown(10_000)
        with backend.engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
