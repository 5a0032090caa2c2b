"""Jobs in a process pool whose children are recycled after every task.

Run from the repository's root:  python examples/process_pool.py

A pool child ends with ``os._exit``: no ``atexit`` hook runs there, so rows
still queued in its background writer would be lost. Each child therefore
configures reec_otel once, in the pool's initializer, and every task ends with
``handle.force_flush()``: the task returns only after its rows are written and
its span exported. The database is REEC_DATABASE_URL (default ``reec_jobs.db``).
"""

from __future__ import annotations

import multiprocessing
import os

import reec_otel
from reec_otel import JobContext, Worker

_handle: reec_otel.ReecOtel | None = None


def start_child() -> None:
    """The pool's initializer: one configured handle per child process."""
    global _handle
    _handle = reec_otel.configure(application_name="process-pool")


def resize_image(number: int) -> str:
    def run(ctx: JobContext) -> str:
        if number == 3:
            raise ValueError(f"image {number} is corrupt")
        ctx.data["pid"] = os.getpid()
        return f"image {number} resized"

    result = Worker(f"resize-image-{number}", run_function=run).execute()
    # The child may end as soon as this task returns: write the rows first.
    assert _handle is not None
    if not _handle.force_flush(10_000):
        print(f"rows of image {number} are not written yet (database away?)")
    return f"{result.state}: {result.message or result.exception}"


def main() -> None:
    with multiprocessing.Pool(processes=2, initializer=start_child, maxtasksperchild=1) as pool:
        for line in pool.map(resize_image, range(6)):
            print(line)


if __name__ == "__main__":
    main()
