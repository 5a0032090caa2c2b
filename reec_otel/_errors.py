"""Exceptions raised by reec_otel itself.

The hierarchy is small on purpose::

    ReecOtelError                  base of every error the package raises
    ├── ConfigurationError         a bad argument or environment variable
    │                              (also a ValueError)
    └── LifecycleError             a handle used after it was shut down

Errors of a job are never wrapped in these: a job's exception is recorded and
returned in its `JobResult`, unchanged.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "LifecycleError", "ReecOtelError"]


class ReecOtelError(Exception):
    """Base class of every exception raised by reec_otel."""


class ConfigurationError(ReecOtelError, ValueError):
    """A setting, given as an argument or read from the environment, is invalid."""


class LifecycleError(ReecOtelError, RuntimeError):
    """An object was used in a state that does not allow it (for example after shutdown)."""
