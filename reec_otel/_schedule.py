"""The cleanup schedule: cron expressions and the in-process scheduler thread.

A cron expression (five fields: minute, hour, day of month, month, day of
week) is read in a time zone by the ``cronsim`` library. It is checked when
the options are built, so that a typo is an error at start-up, not a silent
schedule that never fires. :class:`CleanScheduler` is one daemon thread that
sleeps until the next time the expression names, runs one round, and stops
when asked, within a deadline.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import zoneinfo
from collections.abc import Callable
from typing import Final, Protocol

from cronsim import CronSim, CronSimError

from reec_otel._errors import ConfigurationError, LifecycleError

__all__ = ["CleanScheduler", "next_fire_time", "validate_cron", "validate_time_zone"]

logger = logging.getLogger(__name__)

# Sleep in slices, so that a wall clock set forward (or a suspended machine
# waking up) is noticed within this many seconds.
_MAX_SLEEP_SECONDS: Final = 60.0


def validate_cron(expression: str, what: str = "clean_cron") -> str:
    """Return *expression* if it is a five-field cron expression that ever fires."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ConfigurationError(
            f"{what} must be a cron expression of five fields (minute hour day-of-month "
            f"month day-of-week), for example '0 2 * * *'; got {expression!r}."
        )
    try:
        next(CronSim(expression, dt.datetime.now(dt.UTC)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise ConfigurationError(
            f"{what} is not a valid cron expression ({exc or 'it never fires'}); "
            f"got {expression!r}."
        ) from None
    return expression


def validate_time_zone(name: str, what: str = "clean_time_zone") -> str:
    """Return *name* if it is an IANA time zone known to this system (e.g. Europe/Madrid)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} must be an IANA time zone name; got {name!r}.")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"{what} must be an IANA time zone name such as 'UTC' or 'Europe/Madrid'; "
            f"{name!r} is not known to this system (pip install tzdata provides them)."
        ) from None
    return name


def next_fire_time(expression: str, time_zone: str, after: dt.datetime) -> dt.datetime:
    """The first instant strictly after *after* that *expression* names, in *time_zone*."""
    local = after.astimezone(zoneinfo.ZoneInfo(time_zone))
    return next(CronSim(expression, local))


class Round(Protocol):
    """One cleanup round the scheduler can run and interrupt."""

    def execute(self) -> object: ...

    def cancel(self) -> None: ...


class CleanScheduler:
    """Runs a cleanup round each time a cron expression fires, on a daemon thread.

    Args:
        make_round: builds a fresh round each time (so settings are read anew).
        cron: a five-field cron expression.
        time_zone: the IANA time zone the expression is read in.
        clock: the wall clock, aware; tests may pass their own.
    """

    def __init__(
        self,
        make_round: Callable[[], Round],
        cron: str,
        time_zone: str = "UTC",
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.cron = validate_cron(cron)
        self.time_zone = validate_time_zone(time_zone)
        self._make_round = make_round
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: Round | None = None
        self._thread: threading.Thread | None = None
        self.rounds_run = 0

    def __repr__(self) -> str:
        return f"CleanScheduler(cron={self.cron!r}, time_zone={self.time_zone!r})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread. Starting twice, or after stop(), is a LifecycleError."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                raise LifecycleError("A CleanScheduler can be started only once.")
            self._thread = threading.Thread(
                target=self._run, name="reec-otel-clean-scheduler", daemon=True
            )
            self._thread.start()
        logger.info(
            "LogJob cleanup scheduled at '%s' (%s); next round at %s.",
            self.cron,
            self.time_zone,
            next_fire_time(self.cron, self.time_zone, self._clock()).isoformat(),
        )

    def stop(self, timeout_millis: int = 10_000) -> bool:
        """Stop the thread, interrupting a round between two batches. Idempotent.

        Returns True when the thread has ended within *timeout_millis*.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            self._stop.set()
            current = self._current
            thread = self._thread
        if current is not None:
            current.cancel()
        if thread is None:
            return True
        thread.join(max(deadline - time.monotonic(), 0))
        return not thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            due = next_fire_time(self.cron, self.time_zone, self._clock())
            if not self._sleep_until(due):
                return
            self._run_round()

    def _sleep_until(self, due: dt.datetime) -> bool:
        """Wait until *due* by the wall clock; False if stopped meanwhile."""
        while True:
            remaining = (due - self._clock()).total_seconds()
            if remaining <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(remaining, _MAX_SLEEP_SECONDS)):
                return False

    def _run_round(self) -> None:
        try:
            current = self._make_round()
        except Exception:
            logger.exception("The LogJob cleanup round could not be prepared; skipped.")
            return
        with self._lock:
            if self._stop.is_set():
                return
            self._current = current
        try:
            current.execute()
        except Exception:
            # A Worker records its job's errors itself; this is a failure around it.
            logger.exception("The LogJob cleanup round failed outside its job.")
        finally:
            with self._lock:
                self._current = None
            self.rounds_run += 1
