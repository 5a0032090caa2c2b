"""Which tracer provider job spans go through, and how spans are exported.

The global tracer provider can be set only once per process, so each case runs
in a fresh Python process. OTLP is received for real, over gRPC and over HTTP,
by receivers this test runs on loopback.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from sqlalchemy import create_engine, text


def run_python(
    code: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REEC_", "OTEL_"))}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def count_rows(url: str, table: str = "log_job") -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def span_names(request: trace_service_pb2.ExportTraceServiceRequest) -> list[str]:
    return [
        span.name
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request, context):  # the protocol's method name
        self.names.extend(span_names(request))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector():
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def http_collector():
    names: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the standard library's method name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            names.extend(span_names(request))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield names, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


JOB_SCRIPT = """
    import reec_otel
    handle = reec_otel.configure(application_name="exported")
    result = reec_otel.Worker("exported-job", run_function=lambda ctx: 1 / 0).execute()
    print(result.trace_identifier)
    assert handle.owns_provider
    assert handle.tracer_provider.resource.attributes["service.name"] == "exported"
    assert handle.shutdown(20_000)
"""


def test_a_created_provider_exports_over_otlp_grpc(grpc_collector, tmp_path):
    collector, endpoint = grpc_collector
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "REEC_DATABASE_URL": url}
    done = run_python(JOB_SCRIPT, env)
    assert done.returncode == 0, done.stderr
    assert collector.names == ["exported-job"]
    assert count_rows(url) == 3


def test_a_created_provider_exports_over_otlp_http(http_collector, tmp_path):
    names, endpoint = http_collector
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{endpoint}/v1/traces",
        "REEC_DATABASE_URL": url,
    }
    done = run_python(JOB_SCRIPT, env)
    assert done.returncode == 0, done.stderr
    assert names == ["exported-job"]
    assert count_rows(url) == 3


def test_without_exporter_settings_rows_are_written_and_it_says_so_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    done = run_python(
        """
        import logging
        logging.basicConfig(level=logging.INFO)
        import reec_otel
        from opentelemetry import trace
        handle = reec_otel.configure()
        assert trace.get_tracer_provider() is handle.tracer_provider
        for _ in range(3):
            reec_otel.Worker("quiet", run_function=lambda ctx: None).execute()
        assert handle.shutdown(10_000)
        """,
        {"REEC_DATABASE_URL": url},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("not exported") == 1
    assert count_rows(url) == 9


def test_the_console_exporter_is_chosen_by_otel_traces_exporter(tmp_path):
    done = run_python(
        JOB_SCRIPT,
        {"OTEL_TRACES_EXPORTER": "console", "REEC_DATABASE_URL": f"sqlite:///{tmp_path}/j.db"},
    )
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout[done.stdout.index("{") :])
    assert exported["name"] == "exported-job"
    assert exported["attributes"]["reec.job.state"] == "Failed"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "carrier-pigeon"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke")],
)
def test_an_unknown_exporter_setting_is_a_clear_error(variable, value):
    env = {variable: value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    done = run_python(
        """
        import reec_otel
        try:
            reec_otel.configure(enable_global_db_save=False)
        except reec_otel.ConfigurationError as exc:
            print(exc)
        """,
        env,
    )
    assert done.returncode == 0, done.stderr
    assert value in done.stdout


def test_configure_attaches_to_the_application_s_global_provider(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    done = run_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import reec_otel

        exporter = InMemorySpanExporter()
        app_provider = TracerProvider()
        app_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(app_provider)

        handle = reec_otel.configure()
        assert handle.tracer_provider is app_provider and not handle.owns_provider
        with trace.get_tracer("web").start_as_current_span("GET /"):
            reec_otel.Worker("in-app", run_function=lambda ctx: None).execute()
        assert handle.shutdown(10_000)
        trace.get_tracer("web").start_span("after shutdown").end()
        print(sorted(s.name for s in exporter.get_finished_spans()))
        """,
        {"REEC_DATABASE_URL": url},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['GET /', 'after shutdown', 'in-app']"
    assert count_rows(url) == 3


def test_without_configure_a_worker_traces_globally_and_writes_no_rows(tmp_path):
    done = run_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import reec_otel

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        result = reec_otel.Worker("bare", run_function=lambda ctx: "ok").execute()
        span = exporter.get_finished_spans()[0]
        assert result.trace_identifier == f"{span.context.trace_id:032x}"
        print(span.name)
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bare"
    assert list(tmp_path.iterdir()) == []


def test_without_any_sdk_a_worker_still_gives_each_run_an_identity():
    done = run_python(
        """
        import reec_otel
        a = reec_otel.Worker("no-sdk", run_function=lambda ctx: 1 / 0).execute()
        b = reec_otel.Worker("no-sdk", run_function=lambda ctx: None).execute()
        assert a.state == "Failed" and b.state == "Succeeded"
        assert a.trace_identifier != b.trace_identifier
        assert int(a.trace_identifier, 16) and int(a.span_id, 16)
        print("ok")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
