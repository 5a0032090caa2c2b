"""The SIGTERM policy: a terminated process still records the job it was running.

By default Python dies on SIGTERM at once: no ``finally``, no ``atexit``, so
the running job's Failed row and span are lost. With
``configure(handle_sigterm=True)`` reec_otel installs a handler that raises
:class:`JobTerminated` (a ``SystemExit``) in the main thread. The Worker records
it as the run's failure and re-raises it, like any ``SystemExit``; the
interpreter then unwinds, the handle's exit hook writes the rows and exports
the span, and the process exits with status 143 (128 + SIGTERM), the status a
shell reports for a terminated process.

The handler is installed only from the main thread and only over the default
action: an application that handles SIGTERM itself keeps its own handler.

TODO: jobs running on other threads are not interrupted, so they get no Failed
row; ending their spans as Failed from the exit hook would close that gap.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["JobTerminated"]

logger = logging.getLogger(__name__)

_installed_for: Any = None  # the handle whose configure() installed the handler
_received: JobTerminated | None = None


class JobTerminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM.

    Its message says which signal ended the run; its exit code is 128 plus the
    signal number.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"The process received {name} (signal {int(signum)}) while running; "
            "the run was ended and recorded before exit."
        )
        self.signum = int(signum)
        self.code = 128 + int(signum)


JobTerminated.__module__ = "reec_otel"


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    global _received
    _received = JobTerminated(signum)
    raise _received


def termination() -> JobTerminated | None:
    """The termination this process received, if any.

    In ``asyncio.run`` the handler's exception stops the event loop, and the
    job's task sees only its cancellation; the Worker asks here what ended it.
    """
    return _received


def install_sigterm_handler(handle: Any) -> bool:
    """Install the SIGTERM handler for *handle*; True if it was installed."""
    global _installed_for
    if threading.current_thread() is not threading.main_thread():
        logger.warning("handle_sigterm=True needs configure() on the main thread; not installed.")
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current not in (signal.SIG_DFL, _raise_terminated):
        logger.info("SIGTERM already has a handler of the application's; reec_otel leaves it.")
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    _installed_for = handle
    return True


def uninstall_sigterm_handler(handle: Any) -> None:
    """Put the default action back, if *handle*'s configure() installed the handler."""
    global _installed_for
    if _installed_for is not handle:
        return
    _installed_for = None
    if threading.current_thread() is not threading.main_thread():
        # TODO: restore the default SIGTERM action when shutdown() runs off the main thread.
        return
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
