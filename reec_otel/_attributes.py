"""The vocabulary shared by the worker and the span processor.

A job span carries its facts as span attributes under ``reec.job.*``. The worker
writes them, the processor reads them; neither imports the other, both import
this module. The attribute :data:`NAME` marks a span as a job.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["StateJob"]


class StateJob(enum.StrEnum):
    """The states a run reaches; one LogJob row is written per state reached."""

    ENQUEUED = "Enqueued"
    PROCESSING = "Processing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


PREFIX: Final = "reec.job."

# Set when the job span starts.
NAME: Final = "reec.job.name"
LIGHT: Final = "reec.job.light"
CREATE_USER: Final = "reec.job.create_user"
# True when processing starts later than submission; a child span with
# PHASE == PHASE_PROCESSING then marks the start of processing.
DEFERRED: Final = "reec.job.deferred"
DELAY_MS: Final = "reec.job.delay_ms"
PHASE: Final = "reec.job.phase"
PHASE_PROCESSING: Final = "processing"

# Set when the job span ends.
STATE: Final = "reec.job.state"
DURATION_MS: Final = "reec.job.duration_ms"
MESSAGE: Final = "reec.job.message"
DATA: Final = "reec.job.data"

# Standard exception event of the OpenTelemetry semantic conventions, plus the
# message of the exception's cause, which the conventions do not name.
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EXCEPTION_ESCAPED: Final = "exception.escaped"
EXCEPTION_INNER: Final = "reec.exception.inner"
# Which function raised: the job's run function or its exception handler.
EXCEPTION_SOURCE: Final = "reec.exception.source"
SOURCE_RUN: Final = "run_function"
SOURCE_HANDLER: Final = "run_function_exception"
