"""``reec-otel jobs``: reading LogJob from real processes, on every backend."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import Cli, insert_rows, run_rows
from conftest import Backend
from sqlalchemy import inspect

from reec_otel._schema import COLUMN_NAMES

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def cli(backend: Backend) -> Cli:
    return Cli(backend.url, backend.table_name)


@pytest.fixture
def history(backend: Backend) -> dict[str, list[dict]]:
    """Runs of two jobs of this application and one of another, at known times."""
    runs = {
        "old": run_rows("backup", "Succeeded", duration_ms=5, ended=NOW - dt.timedelta(days=3)),
        "backup": run_rows(
            "backup", "Succeeded", duration_ms=20, ended=NOW - dt.timedelta(hours=1)
        ),
        "report": run_rows("report", "Failed", duration_ms=30, ended=NOW - dt.timedelta(minutes=5)),
        "other": run_rows("backup", "Failed", ended=NOW, application_name="other-app"),
    }
    insert_rows(backend.engine, backend.table_name, [r for rows in runs.values() for r in rows])
    return runs


def test_list_as_json_is_one_array_of_this_apps_rows_newest_first(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    rows = cli.json(["jobs", "list"])

    assert all(list(row) == list(COLUMN_NAMES) for row in rows)
    assert [(r["name_job"], r["state_job"]) for r in rows[:3]] == [
        ("report", "Failed"),
        ("report", "Processing"),
        ("report", "Enqueued"),
    ]
    assert len(rows) == 9
    assert {r["application_name"] for r in rows} == {"cli-tests"}
    created = [dt.datetime.fromisoformat(r["create_date"]) for r in rows]
    assert created == sorted(created, reverse=True)
    assert rows[0]["trace_identifier"] == history["report"][0]["trace_identifier"]


def test_list_filters_by_state_name_trace_window_and_limit(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    failed = cli.json(["jobs", "list"], "--state", "failed")
    recent_backups = cli.json(["jobs", "list"], "--name", "backup", "--since", "2h")
    trace = history["old"][0]["trace_identifier"]
    one_trace = cli.json(["jobs", "list"], "--trace", trace.upper(), "--limit", "2")

    assert [(r["name_job"], r["state_job"]) for r in failed] == [("report", "Failed")]
    assert [r["state_job"] for r in recent_backups] == ["Succeeded", "Processing", "Enqueued"]
    assert recent_backups[0]["duration_ms"] == 20
    assert len(one_trace) == 2 and {r["trace_identifier"] for r in one_trace} == {trace}


def test_list_reads_another_app_or_all_apps_on_request(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    other = cli.json(["jobs", "list"], "--app", "other-app")
    everything = cli.json(["jobs", "list"], "--all-apps", "--limit", "100")

    assert {r["application_name"] for r in other} == {"other-app"}
    assert len(other) == 3
    assert len(everything) == 12


def test_list_as_csv_has_the_column_names_as_header(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    done = cli.run(["jobs", "list"], "--format", "csv", "--state", "Failed")

    assert done.returncode == 0, done.stderr
    records = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(records[0]) == list(COLUMN_NAMES)
    assert [(r["name_job"], r["duration_ms"]) for r in records] == [("report", "30.0")]


def test_list_as_a_table_shows_jobs_states_and_full_trace_ids(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    done = cli.run(["jobs", "list"], "--since", "1d")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "trace" in lines[0] and "state" in lines[0]
    assert len(lines) == 1 + 6
    assert history["report"][0]["trace_identifier"] in lines[1]
    assert "Failed" in lines[1] and "report" in lines[1]


def test_show_prints_every_row_of_a_recorded_run_and_the_full_stack_trace(
    cli: Cli, backend: Backend
) -> None:
    program = [
        sys.executable,
        "-c",
        "import sys; print('tape not found', file=sys.stderr); sys.exit(2)",
    ]
    assert cli.run(["exec"], "--name", "tape-backup", "--", *program).returncode == 2
    trace = backend.rows()[0]["trace_identifier"]

    done = cli.run(["jobs", "show"], trace)
    as_json = cli.json(["jobs", "show"], trace)

    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.index("Enqueued") < text.index("Processing") < text.index("Failed")
    assert "Traceback (most recent call last):" in text
    assert "tape not found" in text
    assert text.rstrip().endswith("tape not found")
    assert [r["state_job"] for r in as_json] == ["Enqueued", "Processing", "Failed"]
    assert as_json[2]["stack_trace"] in text


def test_show_of_an_unknown_trace_is_one_line_and_exit_1(
    cli: Cli, history: dict[str, list[dict]]
) -> None:
    done = cli.run(["jobs", "show"], "0" * 31 + "1")

    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "No rows" in done.stderr


def test_stats_gives_runs_failures_median_p95_and_last_failure_per_job(
    cli: Cli, backend: Backend
) -> None:
    rows = []
    for n in range(1, 21):  # durations 10, 20, ... 200 ms; every fifth run fails
        state = "Failed" if n % 5 == 0 else "Succeeded"
        ended = NOW - dt.timedelta(minutes=60 - n)
        rows += run_rows("sync", state, duration_ms=10.0 * n, ended=ended)
    rows += run_rows("sync", "Failed", duration_ms=9999, ended=NOW - dt.timedelta(days=2))
    rows += run_rows("sync", "Failed", duration_ms=9999, application_name="other-app")
    rows += run_rows("ping", "Succeeded", duration_ms=1.5)
    rows += run_rows("stuck", "Processing")
    insert_rows(backend.engine, backend.table_name, rows)

    stats = cli.json(["jobs", "stats"])

    assert stats[0] == {
        "name_job": "ping",
        "runs": 1,
        "failures": 0,
        "failure_rate": 0.0,
        "median_ms": 1.5,
        "p95_ms": 1.5,
        "last_failure": None,
    }
    sync = stats[1]
    assert len(stats) == 2
    assert (sync["name_job"], sync["runs"], sync["failures"]) == ("sync", 20, 4)
    assert sync["failure_rate"] == 0.2
    assert sync["median_ms"] == pytest.approx(105.0)
    assert sync["p95_ms"] == pytest.approx(190.5)
    last = dt.datetime.fromisoformat(sync["last_failure"])
    assert abs(last - (NOW - dt.timedelta(minutes=40))) < dt.timedelta(seconds=1)


def test_stuck_lists_runs_processing_longer_than_the_threshold(cli: Cli, backend: Backend) -> None:
    stuck = run_rows("import", "Processing", ended=NOW - dt.timedelta(hours=2))
    rows = [
        *stuck,
        *run_rows("import", "Processing", ended=NOW - dt.timedelta(minutes=10)),
        *run_rows("import", "Succeeded", duration_ms=7_200_000),
        *run_rows("import", "Processing", ended=NOW - dt.timedelta(hours=3), application_name="x"),
    ]
    insert_rows(backend.engine, backend.table_name, rows)

    found = cli.json(["jobs", "stuck"])
    with_lower_threshold = cli.json(["jobs", "stuck"], "--older-than", "5m")

    assert [r["span_id"] for r in found] == [stuck[0]["span_id"]]
    assert found[0]["age_seconds"] >= 7200
    assert found[0]["trace_identifier"] == stuck[0]["trace_identifier"]
    assert len(with_lower_threshold) == 2


def test_a_run_killed_with_sigkill_is_listed_as_stuck(cli: Cli, backend: Backend) -> None:
    program = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
    with cli.popen(
        ["exec"],
        "--name",
        "killed-run",
        "--",
        *program,
        stdout=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            _wait_for_rows(backend, 2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)

    stuck = cli.json(["jobs", "stuck"], "--older-than", "0s")

    assert [(r["name_job"], r["span_id"]) for r in stuck] == [
        ("killed-run", backend.rows()[0]["span_id"])
    ]


def _wait_for_rows(backend: Backend, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if inspect(backend.engine).has_table(backend.table_name) and len(backend.rows()) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{count} rows were not written within 60 s")


def test_query_commands_create_no_table(cli: Cli, backend: Backend) -> None:
    with backend.engine.connect():  # the database exists (SQLite: the file), the table not
        pass
    done = cli.run(["jobs", "list"])

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: The LogJob table {backend.table_name} does not exist in "
        f"{cli.url}; the first recorded job or 'reec-otel db upgrade' creates it."
    ]
    assert not inspect(backend.engine).has_table(backend.table_name)


# -- errors, the same on every backend --------------------------------------------


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    return Cli(f"sqlite:///{tmp_path / 'jobs.db'}", "log_job")


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    done = sqlite_cli.run(["jobs", "stats"])

    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert not (tmp_path / "jobs.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "Done"], "Invalid value for '--state'"),
        (["--since", "yesterday"], "'yesterday' is not a duration"),
        (["--trace", "xyz"], "'xyz' is not a trace id"),
    ],
)
def test_a_bad_option_is_a_usage_error(sqlite_cli: Cli, args: list[str], message: str) -> None:
    done = sqlite_cli.run(["jobs", "list"], *args)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_database_url_is_one_line_and_exit_2(sqlite_cli: Cli) -> None:
    done = sqlite_cli.run(["jobs", "list"], url="not a url")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: database_url is not a valid SQLAlchemy database URL "
        "(expected e.g. postgresql+psycopg://user@host/db)."
    ]


def test_an_unreachable_database_is_one_line_exit_1_and_hides_the_password(
    sqlite_cli: Cli,
) -> None:
    done = sqlite_cli.run(["jobs", "list"], url="postgresql+psycopg://app:sekrit@127.0.0.1:1/app")

    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: Database error: OperationalError:")
    assert "sekrit" not in done.stderr + done.stdout
