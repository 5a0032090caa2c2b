"""The tracer job spans are started with, and the sampler that keeps them.

`configure()` installs a tracer here; a Worker asks for it on every run. With
nothing installed, jobs trace through the global tracer provider.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from reec_otel import _attributes as attrs
from reec_otel._diagnostics import RateLimitedLog
from reec_otel._version import __version__

INSTRUMENTATION_NAME = "reec_otel"

_CONTINUED_KEY = create_key("reec_otel.continued_trace")

_lock = threading.Lock()
_installed: trace.Tracer | None = None
# True once configure()'s handle was shut down and none replaced it.
_shut_down = False
_warnings = RateLimitedLog(logging.getLogger(__name__))
# The global provider's tracer, remembered for as long as that provider is global.
_global: tuple[trace.TracerProvider, trace.Tracer] | None = None


def job_tracer() -> trace.Tracer:
    """The tracer for job spans: the configured one, else the global provider's.

    The global provider's tracer keeps job spans too, so that a
    LogJobSpanProcessor added to it without configure() loses no failure.
    """
    global _global
    tracer = _installed
    if tracer is not None:
        return tracer
    if _shut_down:
        _warnings.log(
            logging.WARNING,
            "after-shutdown",
            "A job runs after reec_otel was shut down: it traces through the global "
            "provider and writes no LogJob rows.",
        )
    provider = trace.get_tracer_provider()
    cached = _global
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
    keep_job_spans(tracer)
    _global = (provider, tracer)
    return tracer


def mark_continued(context: Context) -> Context:
    """Mark *context* as holding a trace continued from an identifier alone."""
    return set_value(_CONTINUED_KEY, True, context)


def install(tracer: trace.Tracer | None) -> None:
    """Make *tracer* the one every Worker uses (None: back to the global provider,
    after a shutdown)."""
    global _installed, _shut_down
    with _lock:
        _installed = tracer
        _shut_down = tracer is None


class JobRecordingSampler(Sampler):
    """Delegates every decision, but records a job span the delegate would drop.

    A dropped job span would lose its LogJob rows, failures included. Recorded
    without the sampled flag, the span reaches span processors (so rows are
    written) while exporters, which send sampled spans only, still skip it.
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if parent_context is not None and get_value(_CONTINUED_KEY, parent_context):
            # A trace continued from an identifier carries no sampling
            # decision: decide as for a new trace with that id.
            parent_context = None
        # Positional, as the SDK's tracer calls samplers: older samplers take
        # no trace_state.
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links
        )
        if result.decision is Decision.DROP and attributes and attrs.NAME in attributes:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"JobRecordingSampler{{{self.delegate.get_description()}}}"


def keep_job_spans(tracer: trace.Tracer) -> None:
    """Wrap an SDK tracer's sampler so that job spans are always recorded.

    ``Tracer.sampler`` is a public attribute of the SDK tracer; only this
    package's own tracer is changed, never the application's other tracers.
    """
    if isinstance(tracer, SdkTracer) and not isinstance(tracer.sampler, JobRecordingSampler):
        tracer.sampler = JobRecordingSampler(tracer.sampler)
