"""The SQL queries the README offers give the right answers on every backend.

The queries are read from README.md itself, with the date expressions replaced
as its table says, so that the documentation cannot drift from what works.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from reec_otel import log_job_table
from tests.row_factory import make_row

README = Path(__file__).resolve().parent.parent / "README.md"
TODAY_PG = "(now() AT TIME ZONE 'UTC')::date"
DATE_EXPRESSIONS = {
    "postgresql": {},
    "mariadb": {f"{TODAY_PG} - 7": "UTC_DATE() - INTERVAL 7 DAY", TODAY_PG: "UTC_DATE()"},
    "sqlite": {f"{TODAY_PG} - 7": "date('now', '-7 days')", TODAY_PG: "date('now')"},
}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def readme_queries() -> dict[str, str]:
    section = README.read_text().split("### Questions people ask, in SQL", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"\n([^\n]+):\n\n```sql\n(.*?)```", section, re.S)
    return {title.strip(): sql for title, sql in blocks}


def for_backend(sql: str, backend) -> str:
    for pg, other in DATE_EXPRESSIONS[backend.name].items():
        sql = sql.replace(pg, other)
    return sql.replace("FROM log_job", f"FROM {backend.table_name}").rstrip().rstrip(";")


@pytest.fixture
def history(backend):
    now = dt.datetime.now(dt.UTC)
    rows = [
        make_row(application_name="billing", name_job="sync", state_job="Failed", create_date=now),
        make_row(application_name="billing", name_job="sync", state_job="Failed", create_date=now),
        make_row(
            application_name="billing", name_job="report", state_job="Failed", create_date=now
        ),
        make_row(
            application_name="billing",
            name_job="sync",
            state_job="Failed",
            create_date=now - dt.timedelta(days=2),
        ),
        make_row(application_name="shipping", name_job="sync", state_job="Failed", create_date=now),
        make_row(
            application_name="billing",
            name_job="slow-recent",
            duration_ms=9_000.0,
            create_date=now - dt.timedelta(days=3),
            trace_identifier=TRACE,
        ),
        make_row(
            application_name="billing",
            name_job="slow-ancient",
            duration_ms=99_000.0,
            create_date=now - dt.timedelta(days=400),
        ),
    ]
    table = log_job_table(backend.table_name)
    table.create(backend.engine, checkfirst=True)
    with backend.engine.begin() as connection:
        connection.execute(insert(table), rows)
    return rows


def run(backend, sql):
    with backend.engine.connect() as connection:
        return connection.execute(text(for_backend(sql, backend))).all()


def test_the_readme_offers_the_three_queries():
    assert set(readme_queries()) == {
        "Failures today, by job",
        "The slowest runs of the last seven days",
        "The whole history of one trace (every run and state, in order)",
    }


def test_failures_today_counts_only_today_and_only_the_application(backend, history):
    found = run(backend, readme_queries()["Failures today, by job"])
    assert [(r.name_job, r.failures) for r in found] == [("sync", 2), ("report", 1)]


def test_the_slowest_runs_leave_out_runs_older_than_a_week(backend, history):
    found = run(backend, readme_queries()["The slowest runs of the last seven days"])
    assert found[0].name_job == "slow-recent"
    assert "slow-ancient" not in {r.name_job for r in found}


def test_the_history_of_a_trace_is_every_row_of_that_trace(backend, history):
    title = "The whole history of one trace (every run and state, in order)"
    found = run(backend, readme_queries()[title])
    assert [r.name_job for r in found] == ["slow-recent"]
