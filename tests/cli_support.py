"""Running ``reec-otel`` as a real subprocess against a test's backend."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert

from reec_otel import log_job_table

APPLICATION = "cli-tests"


class Cli:
    """``python -m reec_otel`` on one backend's URL and table."""

    def __init__(self, url: str, table_name: str, application: str = APPLICATION) -> None:
        self.url = url
        self.table_name = table_name
        self.application = application

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REEC_LOG_JOB_TABLE_NAME=self.table_name,
            REEC_APPLICATION_NAME=self.application,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def argv(self, command: Sequence[str], args: Sequence[str], url: str | None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "reec_otel",
            *command,
            "--database-url",
            url or self.url,
            *args,
        ]

    def run(
        self,
        command: Sequence[str],
        *args: str,
        url: str | None = None,
        env: dict[str, str] | None = None,
        text: bool = True,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            self.argv(command, args, url),
            capture_output=True,
            text=text,
            env=env or self.env(),
            timeout=120,
            cwd=cwd,
        )

    def popen(self, command: Sequence[str], *args: str, **options: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(command, args, None), env=self.env(), text=True, **options
        )

    def json(self, command: Sequence[str], *args: str) -> Any:
        done = self.run(command, *args, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def insert_rows(engine: Any, table_name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write LogJob rows directly, creating the table if needed."""
    table = log_job_table(table_name)
    table.create(engine, checkfirst=True)
    with engine.begin() as connection:
        connection.execute(insert(table), [_complete(row) for row in rows])


def _complete(row: dict[str, Any]) -> dict[str, Any]:
    created = row.get("create_date", dt.datetime.now(dt.UTC))
    return {
        "application_name": APPLICATION,
        "name_job": "job",
        "state_job": "Succeeded",
        "trace_identifier": uuid.uuid4().hex,
        "span_id": uuid.uuid4().hex[:16],
        "create_date_only": created.date(),
        "duration_ms": None,
        **row,
        "create_date": created,
    }


def run_rows(
    name_job: str,
    final_state: str,
    *,
    duration_ms: float | None = None,
    ended: dt.datetime | None = None,
    application_name: str = APPLICATION,
) -> list[dict[str, Any]]:
    """The rows of one full run: Enqueued, Processing and its final state."""
    ended = ended or dt.datetime.now(dt.UTC)
    started = ended - dt.timedelta(milliseconds=duration_ms or 0)
    common = {
        "name_job": name_job,
        "application_name": application_name,
        "trace_identifier": uuid.uuid4().hex,
        "span_id": uuid.uuid4().hex[:16],
    }
    rows = [
        {**common, "state_job": "Enqueued", "create_date": started},
        {**common, "state_job": "Processing", "create_date": started},
    ]
    if final_state != "Processing":
        rows.append(
            {**common, "state_job": final_state, "create_date": ended, "duration_ms": duration_ms}
        )
    return rows
