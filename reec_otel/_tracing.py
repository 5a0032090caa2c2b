"""The tracer job spans are started with, and the sampler that keeps them.

`configure()` installs a tracer here; a Worker asks for it on every run. With
nothing installed, jobs trace through the global tracer provider.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from reec_otel import _attributes as attrs
from reec_otel._version import __version__

INSTRUMENTATION_NAME = "reec_otel"

_lock = threading.Lock()
_installed: trace.Tracer | None = None


def job_tracer() -> trace.Tracer:
    """The tracer for job spans: the configured one, else the global provider's."""
    tracer = _installed
    if tracer is None:
        return trace.get_tracer(INSTRUMENTATION_NAME, __version__)
    return tracer


def install(tracer: trace.Tracer | None) -> None:
    """Make *tracer* the one every Worker uses (None: back to the global provider)."""
    global _installed
    with _lock:
        _installed = tracer


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
