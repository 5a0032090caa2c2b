"""Span exporters chosen by the standard ``OTEL_*`` environment variables.

Used by `configure()` when it creates the tracer provider, and by the command
line's ``doctor`` to say what would be used. Exporters are found through the
entry points OpenTelemetry's packages register, so any installed exporter
can be named.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Final

from opentelemetry.sdk.trace.export import SpanExporter

from reec_otel._errors import ConfigurationError

EXPORTER_GROUP: Final = "opentelemetry_traces_exporter"
OTLP_BY_PROTOCOL: Final = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
ENDPOINT_VARIABLES: Final = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters asked for: ``OTEL_TRACES_EXPORTER``, else ``otlp`` if an
    OTLP endpoint is set, else none. ``none`` in the list is left out."""
    raw = (env.get("OTEL_TRACES_EXPORTER") or "").strip()
    if not raw and any(env.get(name) for name in ENDPOINT_VARIABLES):
        raw = "otlp"
    names = [name.strip().lower() for name in raw.split(",")]
    return [name for name in names if name and name != "none"]


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol asked for, ``grpc`` by default (as the Python SDK does)."""
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()


def create_exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    """One exporter per name `exporter_names` gives; a clear error for an unknown one."""
    return [_exporter(name, env) for name in exporter_names(env)]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = otlp_protocol(env)
        if protocol not in OTLP_BY_PROTOCOL:
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be 'grpc' or 'http/protobuf'; got {protocol!r}."
            )
        name = OTLP_BY_PROTOCOL[protocol]
    found = entry_points(group=EXPORTER_GROUP, name=name)
    if not found:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER names {name!r}, but no installed package provides a "
            "span exporter by that name."
        )
    exporter_class: Any = next(iter(found)).load()
    exporter: SpanExporter = exporter_class()
    return exporter
