"""A handful of real jobs against the embedded SQLite default, then their rows.

Run from the repository's root:  python examples/quickstart.py
It writes ``reec_jobs.db`` in the current directory (or where REEC_DATABASE_URL
points) and prints every LogJob row this run wrote.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, select

import reec_otel
from reec_otel import JobContext, Worker, job


def checksum_files(ctx: JobContext) -> str:
    """Hash every file of a fresh temporary folder; report how many."""
    with tempfile.TemporaryDirectory() as folder:
        for index in range(5):
            Path(folder, f"part-{index}.txt").write_text(f"part {index}\n" * 1000)
        digests = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(Path(folder).iterdir())
        }
    ctx.data["files"] = len(digests)
    return f"hashed {len(digests)} files"


def load_settings(ctx: JobContext) -> str:
    """Parse a broken settings document: this job fails, on purpose."""
    try:
        json.loads('{"retries": 3,}')
    except json.JSONDecodeError as exc:
        raise RuntimeError("the settings file is not valid JSON") from exc
    return "unreachable"


def notify_on_failure(ctx: JobContext, exc: Exception) -> None:
    ctx.data["notified"] = "ops@example.invalid"


@job(create_user="quickstart")
def compact_numbers(values: list[int]) -> int:
    return sum(sorted(set(values)))


async def poll_queue(ctx: JobContext) -> str:
    await asyncio.sleep(0.05)
    return "queue empty"


def main() -> None:
    started = datetime.datetime.now(datetime.UTC)
    handle = reec_otel.configure(application_name="quickstart")
    results = [
        Worker("checksum-files", run_function=checksum_files).execute(),
        Worker(
            "load-settings", run_function=load_settings, run_function_exception=notify_on_failure
        ).execute(),
        Worker("warm-cache", delay=0.2, run_function=lambda ctx: "cache warm").execute(),
        asyncio.run(Worker("poll-queue", run_function=poll_queue).execute_async()),
        Worker("light-heartbeat", is_light_execution=True, run_function=lambda ctx: "ok").execute(),
    ]
    print("compact_numbers ->", compact_numbers([3, 1, 3, 2]))
    for result in results:
        print(f"{result.state:<10} {result.trace_identifier}  {result.message or result.exception}")

    handle.force_flush()
    table = handle.table
    if table is None:
        print("Saving is switched off: no rows were written.")
        return
    engine = create_engine(handle.database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                table.c.name_job,
                table.c.state_job,
                table.c.duration_ms,
                table.c.exception_type,
                table.c.message,
                table.c.trace_identifier,
            )
            .where(table.c.application_name == handle.application_name)
            .where(table.c.create_date >= started)
            .order_by(table.c.id_log_job)
        ).all()
    print(f"\nLogJob rows written to {handle.database_url.render_as_string()}:")
    for row in rows:
        duration = "" if row.duration_ms is None else f"{row.duration_ms:8.2f} ms"
        print(
            f"  {row.name_job:<16} {row.state_job:<10} {duration:>11}  "
            f"{row.exception_type or row.message or ''}"
        )
    handle.shutdown()


if __name__ == "__main__":
    main()
