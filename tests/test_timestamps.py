"""Timestamps are UTC and timezone-aware on every backend, whatever the zones say."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine

import reec_otel
from reec_otel import Worker

# Sessions far from UTC on both sides, so a zone leaking anywhere shows.
SESSION_ZONE = {
    "postgresql": "?options=" + quote("-c TimeZone=Asia/Tokyo"),
    "mariadb": "?init_command=" + quote("SET time_zone = '-05:00'"),
    "sqlite": "",
}


@pytest.fixture
def far_from_utc(monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_rows_read_back_in_utc_whatever_the_process_and_session_zones(
    backend, tracing, far_from_utc
):
    url = backend.url + SESSION_ZONE[backend.name]
    handle = reec_otel.configure(
        database_url=url, log_job=backend.log_job, tracer_provider=tracing.provider
    )
    before = dt.datetime.now(dt.UTC)
    try:
        Worker("zoned", run_function=lambda ctx: None).execute()
        handle.force_flush(10_000)
    finally:
        handle.shutdown()
    after = dt.datetime.now(dt.UTC)

    # Read through a far-off session too.
    reader = dataclasses.replace(backend, engine=create_engine(url))
    try:
        rows = reader.rows()
    finally:
        reader.engine.dispose()
    assert len(rows) == 3
    for row in rows:
        created = row["create_date"]
        assert created.utcoffset() == dt.timedelta(0)
        assert before - dt.timedelta(milliseconds=5) <= created <= after
        assert row["create_date_only"] == created.date()


def test_a_naive_timestamp_is_refused_rather_than_guessed():
    from reec_otel._schema import UTCDateTime

    with pytest.raises(ValueError, match="timezone-aware"):
        UTCDateTime().process_bind_param(
            dt.datetime(2026, 1, 1), create_engine("sqlite://").dialect
        )
