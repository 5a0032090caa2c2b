"""CleanLogJobWorker: rules, dry runs, the lock, interruption, and the run it records."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from retention_data import load, make_run
from sqlalchemy import create_engine

import reec_otel
from reec_otel import CleanLogJobWorker, LogJobOptions, StateJob, log_job_table

S, F, P, E = StateJob.SUCCEEDED, StateJob.FAILED, StateJob.PROCESSING, StateJob.ENQUEUED


def _history(backend, *runs):
    table = log_job_table(backend.table_name)
    table.create(backend.engine, checkfirst=True)
    load(backend.engine, table, runs)
    return table


def _spans_left(backend, application_name="billing"):
    rows = backend.rows(application_name=application_name)
    return {row["span_id"] for row in rows if row["name_job"] != "CleanLogJobWorker"}


def _rows_left(backend):
    return [r for r in backend.rows() if r["name_job"] != "CleanLogJobWorker"]


def _cleaner(backend, **options):
    settings = {"table_name": backend.table_name, "enable_clean": False}
    log_job = LogJobOptions(**(settings | options.pop("log_job", {})))
    return CleanLogJobWorker(
        database_url=backend.url, application_name="billing", log_job=log_job, **options
    )


def test_a_state_rule_applies_to_the_final_state_and_keeps_a_failed_run_whole(backend):
    recent_success = make_run("billing", "sync", S, 9)
    old_success = make_run("billing", "sync", S, 12)
    failure_in_rule = make_run("billing", "sync", F, 20)
    # Its first rows are 31 days old, its Failed row 30: the run stays whole.
    failure_at_edge = make_run("billing", "sync", F, 30, started_days_ago=31)
    old_failure = make_run("billing", "sync", F, 31)
    stuck = make_run("billing", "sync", P, 12)
    waiting = make_run("billing", "sync", E, 5)
    other_application = make_run("shipping", "sync", S, 40)
    _history(
        backend,
        recent_success,
        old_success,
        failure_in_rule,
        failure_at_edge,
        old_failure,
        stuck,
        waiting,
        other_application,
    )

    cleaner = _cleaner(backend, log_job={"delete_days_by_state": {"Failed": 30}})
    result = cleaner.execute()

    assert result.state is S, result.exception
    kept = {recent_success, failure_in_rule, failure_at_edge, waiting}
    assert _spans_left(backend) == {run.span_id for run in kept}
    assert len(backend.rows(span_id=failure_at_edge.span_id)) == 3
    assert _spans_left(backend, "shipping") == {other_application.span_id}
    assert cleaner.last_report.rows == 3 + 3 + 2
    assert cleaner.last_report.rules["state Failed"].rows == 3


def test_a_job_name_rule_beats_a_state_rule(backend):
    noisy_failure = make_run("billing", "noisy", F, 2)
    noisy_today = make_run("billing", "noisy", S, 0)
    other_failure = make_run("billing", "sync", F, 2)
    _history(backend, noisy_failure, noisy_today, other_failure)

    cleaner = _cleaner(
        backend,
        log_job={"delete_days_by_state": {F: 30}, "delete_days_by_name": {"noisy": 1}},
    )
    cleaner.execute()

    assert _spans_left(backend) == {noisy_today.span_id, other_failure.span_id}
    assert cleaner.last_report.rules["job noisy"].rows == 3


def test_a_processing_rule_takes_unfinished_runs_and_not_the_processing_rows_of_finished_ones(
    backend,
):
    unfinished = make_run("billing", "sync", P, 3)
    finished = make_run("billing", "sync", S, 3)
    never_started = make_run("billing", "sync", E, 3)
    _history(backend, unfinished, finished, never_started)

    _cleaner(backend, log_job={"delete_days_by_state": {P: 2}}).execute()

    assert _spans_left(backend) == {finished.span_id, never_started.span_id}
    assert len(backend.rows(span_id=finished.span_id)) == 3


def test_a_dry_run_counts_what_a_round_then_deletes_and_deletes_nothing(backend):
    runs = [make_run("billing", "sync", state, days) for state in (S, F, P) for days in (4, 15)]
    _history(backend, *runs)
    before = _rows_left(backend)

    dry = _cleaner(backend, dry_run=True)
    dry_result = dry.execute()

    assert _rows_left(backend) == before
    assert dry.last_report.dry_run
    assert dry.last_report.rows == 3 + 3 + 2
    assert dry_result.message.startswith("Would delete 8 LogJob rows of application 'billing'")

    real = _cleaner(backend)
    real.execute()
    assert real.last_report.rows == dry.last_report.rows
    assert len(_rows_left(backend)) == len(before) - 8


def test_older_than_states_and_names_restrict_one_round(backend):
    old_failed_sync = make_run("billing", "sync", F, 6)
    old_failed_report = make_run("billing", "report", F, 6)
    old_succeeded_sync = make_run("billing", "sync", S, 6)
    _history(backend, old_failed_sync, old_failed_report, old_succeeded_sync)

    _cleaner(backend, older_than_days=5, states=["failed"], names=["sync"]).execute()

    assert _spans_left(backend) == {old_failed_report.span_id, old_succeeded_sync.span_id}


def test_rows_go_in_batches_of_at_most_delete_batch_rows(backend):
    runs = [make_run("billing", "sync", S, 20) for _ in range(10)]
    _history(backend, *runs)
    seen = []

    cleaner = _cleaner(
        backend, log_job={"delete_batch": 6}, progress=lambda done, total: seen.append(done)
    )
    cleaner.execute()

    assert seen[0] == 0  # the count made first, before any batch
    steps = [after - before for before, after in itertools.pairwise(seen)]
    assert steps == [6, 6, 6, 6, 6]
    assert _rows_left(backend) == []


def test_a_second_cleaner_skips_the_round_while_the_first_holds_the_lock(backend, caplog):
    runs = [make_run("billing", "sync", S, 20) for _ in range(4)]
    _history(backend, *runs)
    holding, release = threading.Event(), threading.Event()

    def hold(done, total):
        holding.set()
        release.wait(30)

    first = _cleaner(backend, log_job={"delete_batch": 3}, progress=hold)
    thread = threading.Thread(target=first.execute)
    thread.start()
    try:
        assert holding.wait(30)
        second = _cleaner(backend)
        with caplog.at_level(logging.INFO, logger="reec_otel._retention"):
            result = second.execute()
    finally:
        release.set()
        thread.join(30)

    assert result.state is S
    assert [r.getMessage() for r in caplog.records] == [result.message]
    assert second.last_report.skipped
    assert second.last_report.rows == 0
    assert "another cleaner holds the cleanup lock" in result.message
    assert first.last_report.rows == 12
    assert _rows_left(backend) == []


def test_another_application_has_a_lock_of_its_own(backend):
    _history(backend, make_run("billing", "sync", S, 20), make_run("shipping", "sync", S, 20))
    holding, release = threading.Event(), threading.Event()

    def hold(done, total):
        holding.set()
        release.wait(30)

    first = _cleaner(backend, progress=hold)
    thread = threading.Thread(target=first.execute)
    thread.start()
    try:
        assert holding.wait(30)
        shipping = CleanLogJobWorker(
            database_url=backend.url, application_name="shipping", log_job=first.log_job
        )
        shipping.execute()
    finally:
        release.set()
        thread.join(30)

    assert not shipping.last_report.skipped
    assert shipping.last_report.rows == 3
    assert _rows_left(backend) == []


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import create_engine
    from reec_otel import log_job_table
    from reec_otel._lock import clean_lock

    url, table_name = sys.argv[1], sys.argv[2]
    lock = clean_lock(create_engine(url), log_job_table(table_name), "billing", lease_seconds=1)
    assert lock.acquire()
    print("holding", flush=True)
    while True:
        time.sleep(0.2)
        lock.renew()
    """
)


def test_the_lock_of_a_killed_cleaner_process_passes_to_the_next_cleaner(backend):
    _history(backend, make_run("billing", "sync", S, 20))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, backend.url, backend.table_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        blocked = _cleaner(backend)
        blocked.execute()
        assert blocked.last_report.skipped
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        holder.stdout.close()

    # The server ends the dead session's locks; SQLite's lease runs out (1 s here).
    deadline = time.monotonic() + 30
    while True:
        after = _cleaner(backend)
        after.execute()
        if not after.last_report.skipped or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not after.last_report.skipped
    assert after.last_report.rows == 3


def test_cancel_stops_a_round_between_batches_and_says_so(backend):
    runs = [make_run("billing", "sync", S, 20) for _ in range(10)]
    _history(backend, *runs)
    cleaner = _cleaner(backend, log_job={"delete_batch": 3})
    cleaner.progress = lambda done, total: cleaner.cancel() if done else None

    result = cleaner.execute()

    assert result.state is S
    assert cleaner.last_report.interrupted
    assert cleaner.last_report.rows == 3
    assert len(_rows_left(backend)) == 27
    assert "Stopped before the end" in result.message


def test_a_round_is_a_traced_job_whose_succeeded_row_says_what_went(configured, backend, tracing):
    _history(backend, make_run("tests", "sync", S, 20), make_run("tests", "sync", S, 1))

    cleaner = CleanLogJobWorker()
    result = cleaner.execute()
    assert configured.force_flush(10_000)

    up_to = cleaner.last_report.rules["default"].up_to.isoformat()
    rows = backend.rows(name_job="CleanLogJobWorker")
    assert [r["state_job"] for r in rows] == ["Enqueued", "Processing", "Succeeded"]
    assert rows[-1]["message"] == (
        f"Deleted 3 LogJob rows of application 'tests': 3 dated up to {up_to} (10 days)."
    )
    assert rows[-1]["data"]["rules"]["default"] == {"days": 10, "up_to": up_to, "rows": 3}
    assert rows[-1]["trace_identifier"] == result.trace_identifier
    (span,) = tracing.spans("CleanLogJobWorker")
    assert span.attributes["reec.job.message"] == result.message
    assert not [s for s in tracing.spans() if s.name != "CleanLogJobWorker"]


def test_a_round_takes_its_settings_from_the_environment_without_configure(backend, monkeypatch):
    _history(backend, make_run("billing", "sync", S, 3), make_run("billing", "sync", S, 1))
    monkeypatch.setenv("REEC_DATABASE_URL", backend.url)
    monkeypatch.setenv("REEC_APPLICATION_NAME", "billing")
    monkeypatch.setenv("REEC_LOG_JOB_TABLE_NAME", backend.table_name)
    monkeypatch.setenv("REEC_LOG_JOB_DELETE_DAYS", "2d")

    cleaner = CleanLogJobWorker()
    cleaner.execute()

    assert cleaner.last_report.rows == 3
    assert len(_rows_left(backend)) == 3


def test_a_round_on_a_table_not_created_yet_deletes_nothing_and_succeeds(backend):
    result = _cleaner(backend).execute()

    assert result.state is S
    assert result.message == "Deleted 0 LogJob rows of application 'billing'."


def test_a_database_error_during_a_round_fails_the_run(backend):
    engine = create_engine(backend.url)
    _history(backend, *[make_run("billing", "sync", S, 20) for _ in range(4)])
    cleaner = _cleaner(backend, log_job={"delete_batch": 3})

    def drop_table_after_first_batch(done, total):
        if done:
            log_job_table(backend.table_name).drop(engine)

    cleaner.progress = drop_table_after_first_batch
    try:
        result = cleaner.execute()
    finally:
        engine.dispose()

    assert result.state is F
    assert cleaner.last_report is None


def test_execute_async_runs_the_round_off_the_event_loop_thread(backend):
    _history(backend, make_run("billing", "sync", S, 20))
    threads = []
    cleaner = _cleaner(backend, progress=lambda done, total: threads.append(threading.get_ident()))

    result = asyncio.run(cleaner.execute_async())

    assert result.state is S
    assert cleaner.last_report.rows == 3
    assert threads and threading.get_ident() not in threads


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"older_than_days": -1}, "older_than_days must be a whole number of days"),
        ({"states": ["Done"]}, "states has 'Done', which is not a state"),
        ({"names": [""]}, "names keys must be job names of 1 to 255 characters"),
        ({"application_name": ""}, "application_name must be a non-empty string"),
    ],
)
def test_bad_arguments_are_refused_when_the_cleaner_is_made(sqlite_backend, arguments, message):
    settings = {"database_url": sqlite_backend.url, "application_name": "billing"}
    with pytest.raises(reec_otel.ConfigurationError, match=message):
        CleanLogJobWorker(**(settings | arguments))
