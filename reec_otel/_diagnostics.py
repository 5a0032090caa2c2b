"""Rate-limited warnings, so that an outage is reported, not repeated every second."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs a message under a key at most once per *interval_seconds*.

    The next message under that key says how many were held back meanwhile.
    """

    def __init__(self, logger: logging.Logger, interval_seconds: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += " (%d similar messages held back)"
            args = (*args, held)
        self._logger.log(level, message, *args, exc_info=exc_info)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._held.clear()
