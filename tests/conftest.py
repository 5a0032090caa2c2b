"""Shared fixtures: real databases, an in-memory span exporter, a configured handle.

Every test that touches a database runs on SQLite, PostgreSQL and MariaDB
(the ``backend`` fixture). Each test gets a table of its own, dropped
afterwards, so that test runs sharing a server never see each other's rows.
A server that cannot be reached is skipped with the reason, unless
``REEC_TEST_REQUIRE_SERVERS=1`` makes that a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import reec_otel
from reec_otel import LogJobOptions, log_job_table
from reec_otel._writer import BatchWriter, create_database_engine

SERVER_URLS = {
    "postgresql": os.environ.get(
        "REEC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("REEC_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ("sqlite", "postgresql", "mariadb")
REQUIRE_SERVERS = os.environ.get("REEC_TEST_REQUIRE_SERVERS") == "1"


@functools.cache
def server_unreachable(name: str) -> str | None:
    """None if the server answers, else the reason it does not."""
    engine = create_engine(SERVER_URLS[name], connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"{name} at {engine.url.render_as_string()} is unreachable: {exc.orig or exc}"
    finally:
        engine.dispose()
    return None


def require_server(name: str) -> None:
    reason = server_unreachable(name)
    if reason is None:
        return
    if REQUIRE_SERVERS:
        pytest.fail(f"REEC_TEST_REQUIRE_SERVERS=1 but {reason}")
    pytest.skip(reason)


@dataclasses.dataclass
class Backend:
    """One database for one test: its URL, a table of the test's own, a reader."""

    name: str
    url: str
    table_name: str
    engine: Engine

    @property
    def log_job(self) -> LogJobOptions:
        return LogJobOptions(table_name=self.table_name)

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """Every row of the test's table, oldest first, optionally filtered by column.

        No table yet (the writer has not connected) reads as no rows.
        """
        if not inspect(self.engine).has_table(self.table_name):
            return []
        table = log_job_table(self.table_name)
        query = select(table).order_by(table.c.id_log_job)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def drop(self) -> None:
        log_job_table(self.table_name).drop(self.engine, checkfirst=True)


def _backend_url(name: str, tmp_path: Path) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    require_server(name)
    return SERVER_URLS[name]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    url = _backend_url(name, tmp_path)
    engine = create_engine(url)
    db = Backend(name, url, f"log_job_{uuid.uuid4().hex[:12]}", engine)
    try:
        yield db
    finally:
        db.drop()
        engine.dispose()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """SQLite alone, for behaviour that does not depend on the database."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = create_engine(url)
    db = Backend("sqlite", url, "log_job", engine)
    try:
        yield db
    finally:
        engine.dispose()


@pytest.fixture
def writer(backend: Backend) -> Iterator[BatchWriter]:
    """A background writer on the test's table, flushing often."""
    engine = create_database_engine(backend.url)
    writer = BatchWriter(engine, log_job_table(backend.table_name), flush_interval_seconds=0.05)
    yield writer
    writer.shutdown(10_000)


@dataclasses.dataclass
class Tracing:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self, name: str | None = None) -> list[Any]:
        finished = self.exporter.get_finished_spans()
        return [s for s in finished if name is None or s.name == name]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """An SDK provider exporting synchronously to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture
def configured(backend: Backend, tracing: Tracing) -> Iterator[reec_otel.ReecOtel]:
    """reec_otel configured on the test's database and in-memory provider."""
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="tests",
        log_job=backend.log_job,
        tracer_provider=tracing.provider,
        flush_interval_seconds=0.05,
    )
    yield handle
    handle.shutdown(10_000)


@pytest.fixture(autouse=True)
def _no_reec_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests start without REEC_* and OTEL_* variables of the developer's shell.

    Spool files of writers left at their default place go to the test's own
    directory, not to the user's state directory.
    """
    for name in list(os.environ):
        if name.startswith(("REEC_", "OTEL_")) and not name.startswith("REEC_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
