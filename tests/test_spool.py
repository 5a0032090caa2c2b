"""The spool file: rows in order, a size cap, one owner per file, orphans adopted."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from reec_otel import log_job_table
from reec_otel._schema import LogJobRow
from reec_otel._spool import Spool, _encode, default_spool_directory
from reec_otel._writer import BatchWriter, create_database_engine
from tests.tcp_proxy import unused_loopback_port


def _row(number: int, state: str = "Succeeded") -> dict[str, Any]:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, number, tzinfo=dt.UTC)
    return {
        "name_job": f"job-{number}",
        "state_job": state,
        "span_id": f"{number:016x}",
        "duration_ms": 1.5,
        "data": '{"k": [1, null]}',
        "message": None,
        "create_date": created,
        "create_date_only": created.date(),
    }


def test_rows_come_back_in_order_with_their_types(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    rows = [_row(n) for n in range(5)]
    assert spool.append(rows[:3]) == 3
    assert spool.append(rows[3:]) == 2
    first = spool.peek(2)
    assert first == rows[:2]
    spool.consume(1)
    assert spool.peek(10) == rows[1:]
    spool.consume(4)
    assert spool.pending == 0
    assert spool.peek(10) == []
    spool.close()


def test_rows_larger_than_a_read_block_come_back_whole_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    # About 3 MB in all: batches cross the boundaries of the blocks the spool reads.
    rows = [{**_row(n), "message": f"{n}:" + "x" * (2_000 + n)} for n in range(1_000)]
    assert spool.append(rows) == len(rows)
    seen = []
    while spool.pending:
        batch = spool.peek(333)
        assert batch, "a pending row must come back"
        seen += batch
        spool.consume(len(batch))
    assert seen == rows
    assert spool.take_lost() == 0
    spool.close()


def test_a_row_cut_short_at_the_end_of_an_adopted_file_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    owner = Spool(tmp_path)
    owner.append([_row(1), _row(2)])
    owner.close()
    (path,) = tmp_path.glob("*.spool")
    with path.open("ab") as file:
        file.write(_encode(_row(3))[:-20])  # a write the process did not finish
    reader = Spool(tmp_path)
    # The cut row was accepted by the process that ended: it is lost, and says so.
    assert reader.adopt_orphans() == 3
    assert reader.peek(10) == [_row(1), _row(2)]
    reader.consume(2)
    assert reader.peek(10) == []
    assert reader.pending == 0
    assert reader.take_lost() == 1
    assert "unreadable row" in caplog.text
    reader.close()


def test_a_log_job_row_comes_back_as_the_same_columns(tmp_path: Path) -> None:
    created = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    row = LogJobRow("app", "job", "Failed", "a" * 32, "b" * 16, "someone", created)
    row.duration_ms = 2.25
    row.data = '{"k": 1}'
    spool = Spool(tmp_path)
    assert spool.append([row]) == 1
    (back,) = spool.peek(1)
    assert back == row
    assert back["create_date"] == created and back["create_date_only"] == created.date()
    spool.close()


def test_the_size_cap_takes_only_the_rows_that_fit(tmp_path: Path) -> None:
    one_row = len(_encode(_row(1)))
    spool = Spool(tmp_path / "capped", max_bytes=one_row * 2 + 1)
    assert spool.append([_row(n) for n in range(1, 6)]) == 2
    assert spool.append([_row(9)]) == 0
    assert spool.pending == 2
    spool.close()


def test_a_living_owner_s_file_is_never_adopted_and_an_ended_one_s_is(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    owner.append([_row(1), _row(2)])
    other = Spool(tmp_path)
    assert other.adopt_orphans() == 0, "the owner still holds its file"
    owner.close()  # the owner ends with its rows unwritten
    assert other.adopt_orphans() == 2
    assert other.peek(10) == [_row(1), _row(2)]
    other.consume(2)
    assert not list(tmp_path.glob("*.spool")), "an adopted file is deleted once written"
    other.close()


def test_a_damaged_row_in_an_adopted_file_is_skipped_and_counted(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    owner.append([_row(1)])
    owner.close()
    (path,) = tmp_path.glob("*.spool")
    with path.open("ab") as file:
        file.write(b"{not json\n")
    ended = Spool(tmp_path)
    ended.append([_row(2)])
    ended.close()
    reader = Spool(tmp_path)
    assert reader.adopt_orphans() == 3
    seen = []
    while reader.pending:
        rows = reader.peek(10)
        seen += rows
        reader.consume(len(rows))
    assert sorted(r["name_job"] for r in seen) == ["job-1", "job-2"]
    assert reader.take_lost() == 1
    reader.close()


def test_the_default_directory_names_application_and_table_without_the_password(
    tmp_path: Path,
) -> None:
    where = default_spool_directory("postgresql://app:***@db/x", "log_job", "billing/eu")
    assert where.parent == tmp_path / "state" / "reec_otel" / "spool"
    assert where.name.startswith("billing_eu-log_job-")
    assert "***" not in str(where)
    assert os.environ["XDG_STATE_HOME"] == str(tmp_path / "state")


def test_when_memory_is_full_a_failed_row_takes_the_place_of_the_newest_other_row() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{unused_loopback_port()}/none"
    # A long flush interval: the rows stay in memory while the test fills it.
    writer = BatchWriter(
        create_database_engine(url), log_job_table(), max_queue_rows=5, flush_interval_seconds=60
    )
    try:
        accepted = [writer.submit(_row(n)) for n in range(5)]
        accepted += [writer.submit(_row(10 + n, "Failed")) for n in range(2)]
        accepted += [writer.submit(_row(20))]
        kept = [row["name_job"] for row in writer._queue]
        statistics = writer.statistics()
    finally:
        writer.shutdown(500)
    assert accepted == [True] * 7 + [False]
    assert kept == ["job-0", "job-1", "job-2", "job-10", "job-11"]
    assert statistics.rows_dropped == 3
    assert statistics.rows_queued == 5


def test_a_spool_directory_another_user_owns_is_refused(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    # The test's own directory stands for the shared temporary directory, and
    # the directory is made to look owned by someone else.
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    spool_dir = tmp_path / "reec_otel-0" / "spool"
    spool_dir.mkdir(parents=True)
    real_getuid = os.getuid
    monkeypatch.setattr(os, "getuid", lambda: real_getuid() + 1)
    spool = Spool(spool_dir)
    try:
        stored = spool.append([_row(1)])
    finally:
        spool.close()
    assert stored == 0
    assert list(spool_dir.iterdir()) == []
