"""``reec-otel db`` and ``reec-otel doctor`` on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cli_support import Cli
from conftest import Backend, Tracing
from sqlalchemy import Engine, inspect, text

import reec_otel
from reec_otel import LogJobOptions, log_job_table
from reec_otel._migrations import version_table_name


@pytest.fixture
def cli(backend: Backend) -> Iterator[Cli]:
    yield Cli(backend.url, backend.table_name)
    version_table = version_table_name(backend.table_name)
    with backend.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {version_table}"))


def shape(engine: Engine, table_name: str) -> dict[str, Any]:
    """The table as the database describes it, its own name replaced by T."""
    found = inspect(engine)

    def named(name: str | None) -> str | None:
        return None if name is None else name.replace(table_name, "T")

    return {
        "columns": [
            (c["name"], str(c["type"].compile(dialect=engine.dialect)), c["nullable"])
            for c in found.get_columns(table_name)
        ],
        "primary_key": found.get_pk_constraint(table_name)["constrained_columns"],
        "indexes": sorted(
            (named(i["name"]), tuple(i["column_names"]), bool(i["unique"]))
            for i in found.get_indexes(table_name)
        ),
        "unique": sorted(
            (named(u["name"]), tuple(u["column_names"]))
            for u in found.get_unique_constraints(table_name)
        ),
    }


def test_upgrade_on_an_empty_database_creates_exactly_the_logjob_table(
    cli: Cli, backend: Backend
) -> None:
    with backend.engine.connect():  # the database exists (SQLite: the file), the table not
        pass
    before = cli.run(["db", "current"])
    done = cli.run(["db", "upgrade"])
    after = cli.run(["db", "current"])

    assert "no table yet" in before.stdout
    assert done.returncode == 0, done.stderr
    assert "upgraded from nothing to 0001_baseline" in done.stdout
    assert after.stdout.strip().endswith("at 0001_baseline (head).")
    reference = f"{backend.table_name[:-1]}r"
    log_job_table(reference).create(backend.engine)
    try:
        assert shape(backend.engine, backend.table_name) == shape(backend.engine, reference)
    finally:
        log_job_table(reference).drop(backend.engine)
    found = inspect(backend.engine)
    assert found.has_table(version_table_name(backend.table_name))
    assert (
        not found.has_table("alembic_version")
        or "alembic_version" not in cli.run(["db", "current"]).stdout
    )


def test_upgrade_recognises_a_table_made_by_configure_and_keeps_its_rows(
    cli: Cli, backend: Backend, tracing: Tracing
) -> None:
    handle = reec_otel.configure(
        database_url=backend.url,
        application_name="cli-tests",
        log_job=LogJobOptions(table_name=backend.table_name),
        tracer_provider=tracing.provider,
    )
    reec_otel.Worker("before-upgrade", run_function=lambda ctx: "kept").execute()
    handle.shutdown()
    table_before = shape(backend.engine, backend.table_name)

    current = cli.run(["db", "current"])
    first = cli.run(["db", "upgrade"])
    second = cli.run(["db", "upgrade"])

    assert "table present, created outside the migrations" in current.stdout
    assert first.returncode == 0, first.stderr
    assert "existing table recorded at 0001_baseline" in first.stdout
    assert "already at 0001_baseline" in second.stdout
    assert shape(backend.engine, backend.table_name) == table_before
    assert [r["message"] for r in backend.rows(state_job="Succeeded")] == ["kept"]


def test_upgrade_leaves_a_foreign_table_of_that_name_alone(cli: Cli, backend: Backend) -> None:
    with backend.engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {backend.table_name} (id INTEGER PRIMARY KEY)"))

    done = cli.run(["db", "upgrade"])

    assert done.returncode == 1
    assert "is not a LogJob table" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    columns = [c["name"] for c in inspect(backend.engine).get_columns(backend.table_name)]
    assert columns == ["id"]


def test_sql_prints_the_ddl_and_runs_nothing(cli: Cli, backend: Backend) -> None:
    done = cli.run(["db", "sql"])

    assert done.returncode == 0, done.stderr
    assert f"CREATE TABLE {backend.table_name} (" in done.stdout
    assert f"CREATE TABLE {version_table_name(backend.table_name)} (" in done.stdout
    assert f"CREATE INDEX ix_{backend.table_name}_trace" in done.stdout
    assert "0001_baseline" in done.stdout
    found = inspect(backend.engine)
    assert not found.has_table(backend.table_name)
    assert not found.has_table(version_table_name(backend.table_name))


def test_doctor_passes_on_a_migrated_database_and_fails_without_the_table(
    cli: Cli, backend: Backend
) -> None:
    with backend.engine.connect():  # the database exists (SQLite: the file), the table not
        pass
    missing = cli.run(["doctor"], "--format", "json")
    assert cli.run(["db", "upgrade"]).returncode == 0
    healthy = cli.run(["doctor"], "--format", "json")

    assert missing.returncode == 1
    assert healthy.returncode == 0, healthy.stdout
    statuses = {c["name"]: c["status"] for c in json.loads(healthy.stdout)["checks"]}
    assert statuses == {
        "settings": "ok",
        "database": "ok",
        "table": "ok",
        "migration": "ok",
        "otlp": "skipped",
    }
    report = json.loads(missing.stdout)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["table"] == "failed"
    assert report["settings"]["table"] == backend.table_name


@pytest.fixture
def schema(backend: Backend) -> Iterator[str]:
    """A schema (PostgreSQL) or database (MariaDB) of the test's own."""
    if backend.name == "sqlite":
        pytest.skip("SQLite has no schemas to create")
    name = f"reec_cli_{uuid.uuid4().hex[:10]}"
    with backend.engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {name}"))
    yield name
    drop = "DROP SCHEMA {} CASCADE" if backend.name == "postgresql" else "DROP SCHEMA {}"
    with backend.engine.begin() as connection:
        connection.execute(text(drop.format(name)))


def test_upgrade_and_queries_work_in_a_configured_schema(
    cli: Cli, backend: Backend, schema: str
) -> None:
    env = cli.env(REEC_LOG_JOB_SCHEMA=schema)
    upgraded = cli.run(["db", "upgrade"], env=env)
    recorded = cli.run(["exec"], "--name", "in-schema", "--", "true", env=env)
    listed = cli.run(["jobs", "list"], "--format", "json", env=env)

    assert upgraded.returncode == 0, upgraded.stderr
    assert f"{schema}.{backend.table_name} in" in upgraded.stdout
    found = inspect(backend.engine)
    assert found.has_table(backend.table_name, schema=schema)
    assert found.has_table(version_table_name(backend.table_name), schema=schema)
    assert not found.has_table(backend.table_name)
    assert recorded.returncode == 0, recorded.stderr
    assert [r["state_job"] for r in json.loads(listed.stdout)] == [
        "Succeeded",
        "Processing",
        "Enqueued",
    ]


# -- the same on every backend ------------------------------------------------------


@pytest.fixture
def sqlite_cli(sqlite_backend: Backend) -> Cli:
    return Cli(sqlite_backend.url, sqlite_backend.table_name)


def test_doctor_masks_the_password_and_checks_the_otlp_endpoint(sqlite_cli: Cli) -> None:
    with socket_listener() as port:
        env = sqlite_cli.env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
        listening = sqlite_cli.run(["doctor"], env=env)
    closed = sqlite_cli.run(
        ["doctor"],
        url="postgresql+psycopg://app:sekrit@127.0.0.1:1/app",
        env=sqlite_cli.env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}"),
    )

    assert f"✓ otlp: http://127.0.0.1:{port} accepts connections (grpc)" in listening.stdout
    assert closed.returncode == 1
    assert "postgresql+psycopg://app:***@127.0.0.1:1/app" in closed.stdout
    assert "sekrit" not in closed.stdout + closed.stderr
    assert "✗ database:" in closed.stdout
    assert f"✗ otlp: http://127.0.0.1:{port} does not accept connections" in closed.stdout


class socket_listener:
    """A loopback TCP socket that accepts connections while the block runs."""

    def __enter__(self) -> int:
        import socket

        self.server = socket.create_server(("127.0.0.1", 0))
        return int(self.server.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def test_python_m_and_the_installed_script_are_the_same_command(sqlite_cli: Cli) -> None:
    import subprocess
    from pathlib import Path

    script = Path(sys.executable).with_name("reec-otel")
    via_script = subprocess.run([script, "--version"], capture_output=True, text=True)
    via_module = subprocess.run(
        [sys.executable, "-m", "reec_otel", "--version"], capture_output=True, text=True
    )

    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout == f"reec-otel, version {reec_otel.__version__}\n"
