"""reec_otel: safe, traceable background jobs on OpenTelemetry.

A :class:`Worker` runs one job inside one span; :class:`LogJobSpanProcessor`
turns job spans into :class:`LogJob` rows in the application's own database,
while the same spans go on to any OTLP backend. :func:`configure` wires both.
"""

from reec_otel._attributes import StateJob
from reec_otel._configure import ReecOtel, Statistics, configure
from reec_otel._errors import ConfigurationError, LifecycleError, ReecOtelError
from reec_otel._processor import LogJobSpanProcessor
from reec_otel._retention import CleanLogJobWorker, CleanReport
from reec_otel._sanitize import redact_secrets
from reec_otel._schema import LogJob, log_job_table
from reec_otel._settings import LogJobOptions
from reec_otel._signals import JobTerminated
from reec_otel._version import __version__
from reec_otel._worker import IWorker, JobContext, JobResult, Worker, job

__all__ = [
    "CleanLogJobWorker",
    "CleanReport",
    "ConfigurationError",
    "IWorker",
    "JobContext",
    "JobResult",
    "JobTerminated",
    "LifecycleError",
    "LogJob",
    "LogJobOptions",
    "LogJobSpanProcessor",
    "ReecOtel",
    "ReecOtelError",
    "StateJob",
    "Statistics",
    "Worker",
    "__version__",
    "configure",
    "job",
    "log_job_table",
    "redact_secrets",
]
