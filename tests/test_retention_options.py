"""Retention options: defaults, checks at construction, and the REEC_LOG_JOB_* variables."""

from __future__ import annotations

import types

import pytest
from opentelemetry import trace
from sqlalchemy import inspect

import reec_otel
from reec_otel import ConfigurationError, LogJobOptions, StateJob


def test_retention_defaults_follow_the_original():
    options = LogJobOptions()

    assert options.enable_clean is True
    assert options.delete_days == 10
    assert options.delete_batch == 1_000
    assert options.clean_cron == "0 2 * * *"
    assert options.clean_time_zone == "UTC"
    assert dict(options.delete_days_by_state) == {}
    assert dict(options.delete_days_by_name) == {}


def test_rules_are_read_only_and_state_keys_are_read_in_any_case():
    rules = {"failed": 30, StateJob.SUCCEEDED: 3}
    options = LogJobOptions(delete_days_by_state=rules, delete_days_by_name={"noisy": 1})
    rules["failed"] = 1

    assert options.delete_days_by_state == {StateJob.FAILED: 30, StateJob.SUCCEEDED: 3}
    assert isinstance(options.delete_days_by_state, types.MappingProxyType)
    with pytest.raises(TypeError):
        options.delete_days_by_name["noisy"] = 5  # type: ignore[index]
    assert hash(options) == hash(LogJobOptions(delete_days_by_state={"Failed": 30}))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("delete_days", -1, "LogJobOptions.delete_days must be a whole number of days"),
        ("delete_days", 2.5, "LogJobOptions.delete_days must be a whole number of days"),
        ("delete_batch", 0, "LogJobOptions.delete_batch must be a whole number of rows"),
        ("enable_clean", "yes", "enable_clean must be a bool"),
        ("clean_cron", "61 * * * *", r"LogJobOptions.clean_cron is not a valid cron expression"),
        ("clean_cron", "0 2 * * * *", "must be a cron expression of five fields"),
        ("clean_cron", "0 0 31 2 *", "is not a valid cron expression"),
        ("clean_time_zone", "Mars/Olympus", "must be an IANA time zone name"),
        ("delete_days_by_state", {"Done": 3}, "has 'Done', which is not a state"),
        ("delete_days_by_state", {"Failed": -3}, r"delete_days_by_state\['Failed'\]"),
        ("delete_days_by_name", {"": 3}, "keys must be job names of 1 to 255 characters"),
        ("delete_days_by_name", [("x", 1)], "must be a mapping of days"),
    ],
)
def test_a_bad_retention_option_is_refused_at_construction(field, value, message):
    with pytest.raises(ConfigurationError, match=message) as raised:
        LogJobOptions(**{field: value})
    assert str(raised.value).endswith(".")


def test_every_retention_variable_is_read():
    options = LogJobOptions.from_environment(
        {
            "REEC_LOG_JOB_ENABLE_CLEAN": "off",
            "REEC_LOG_JOB_DELETE_DAYS": "14d",
            "REEC_LOG_JOB_DELETE_BATCH": "250",
            "REEC_LOG_JOB_CLEAN_CRON": "30 3 * * 1-5",
            "REEC_LOG_JOB_CLEAN_TIME_ZONE": "America/Lima",
            "REEC_LOG_JOB_DELETE_DAYS_BY_STATE": "Failed=30, succeeded=3",
            "REEC_LOG_JOB_DELETE_DAYS_BY_NAME": "noisy-poller=1,nightly-export=7d",
        }
    )

    assert options.enable_clean is False
    assert options.delete_days == 14
    assert options.delete_batch == 250
    assert options.clean_cron == "30 3 * * 1-5"
    assert options.clean_time_zone == "America/Lima"
    assert options.delete_days_by_state == {StateJob.FAILED: 30, StateJob.SUCCEEDED: 3}
    assert options.delete_days_by_name == {"noisy-poller": 1, "nightly-export": 7}


def test_job_names_with_commas_are_written_as_a_json_object():
    options = LogJobOptions.from_environment(
        {"REEC_LOG_JOB_DELETE_DAYS_BY_NAME": '{"export, nightly": 7, "a=b": 2}'}
    )

    assert options.delete_days_by_name == {"export, nightly": 7, "a=b": 2}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REEC_LOG_JOB_DELETE_DAYS", "ten", "must be a number of days such as 10, 10d or 2w"),
        ("REEC_LOG_JOB_DELETE_BATCH", "1e3", "must be a whole number of rows from 1 to"),
        ("REEC_LOG_JOB_ENABLE_CLEAN", "maybe", "must be true or false"),
        ("REEC_LOG_JOB_CLEAN_CRON", "every night", "must be a cron expression of five fields"),
        ("REEC_LOG_JOB_CLEAN_TIME_ZONE", "CEST+2", "must be an IANA time zone name"),
        ("REEC_LOG_JOB_DELETE_DAYS_BY_STATE", "Failed:30", "must be written key=days"),
        ("REEC_LOG_JOB_DELETE_DAYS_BY_STATE", "Stuck=3", "has 'Stuck', which is not a state"),
        ("REEC_LOG_JOB_DELETE_DAYS_BY_NAME", "{bad json", "is not a valid JSON object"),
        ("REEC_LOG_JOB_DELETE_DAYS_BY_NAME", "[1, 2]", "must be written key=days"),
        ("REEC_LOG_JOB_DELETE_DAYS_BY_NAME", "x=-1", "must be a number of days"),
    ],
)
def test_a_bad_retention_variable_is_an_error_naming_it(variable, value, message):
    with pytest.raises(ConfigurationError, match=message) as raised:
        LogJobOptions.from_environment({variable: value})
    assert f"The environment variable {variable}" in str(raised.value)


def test_a_bad_cron_expression_stops_configure_before_anything_is_set_up(backend, monkeypatch):
    monkeypatch.setenv("REEC_LOG_JOB_TABLE_NAME", backend.table_name)
    monkeypatch.setenv("REEC_LOG_JOB_CLEAN_CRON", "0 2 * *")
    provider_before = trace.get_tracer_provider()

    with pytest.raises(ConfigurationError, match="REEC_LOG_JOB_CLEAN_CRON"):
        reec_otel.configure(database_url=backend.url, application_name="billing")

    assert trace.get_tracer_provider() is provider_before
    assert reec_otel._configure.current() is None
    assert not inspect(backend.engine).has_table(backend.table_name)
