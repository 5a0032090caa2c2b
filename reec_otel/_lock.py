"""One cleaner at a time per application, across processes and machines.

PostgreSQL holds a session advisory lock, MariaDB and MySQL a named lock
(``GET_LOCK``): both belong to one open connection and vanish with it, so a
cleaner that dies frees its lock. SQLite has neither; there the lock is a row
in a small table ``reec_otel_lock`` with a lease that the holder renews after
each batch, so that a crashed holder's row expires. Every attempt is
non-blocking: a cleaner that does not get the lock skips its round.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from typing import Final, Protocol

from sqlalchemy import Column, Float, MetaData, String, Table, delete, inspect, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from reec_otel._errors import ConfigurationError

__all__ = ["CleanLock", "clean_lock", "lock_key"]

logger = logging.getLogger(__name__)

LOCK_TABLE_NAME: Final = "reec_otel_lock"
DEFAULT_LEASE_SECONDS: Final = 15 * 60


class CleanLock(Protocol):
    """A non-blocking lock: acquire once, renew while working, release at the end."""

    def acquire(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...


def lock_key(table: Table, application_name: str) -> str:
    """The lock's name: the table (with its schema) and the application."""
    schema = f"{table.schema}." if table.schema else ""
    return f"reec_otel.clean:{schema}{table.name}:{application_name}"


def clean_lock(
    engine: Engine,
    table: Table,
    application_name: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> CleanLock:
    """The lock that keeps cleaners of *application_name* on *table* apart."""
    key = lock_key(table, application_name)
    backend = engine.dialect.name
    if backend == "postgresql":
        return _SessionLock(engine, _pg_statements(key))
    if backend in ("mysql", "mariadb"):
        return _SessionLock(engine, _mysql_statements(key))
    if backend == "sqlite":
        return _LeaseRowLock(engine, table.schema, key, lease_seconds)
    raise ConfigurationError(
        f"The {backend!r} database is not supported; use SQLite, PostgreSQL or MariaDB/MySQL."
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _pg_statements(key: str) -> tuple[str, str, dict[str, object]]:
    # Advisory locks take one signed 64-bit key.
    number = int.from_bytes(_digest(key)[:8], "big", signed=True)
    return (
        "SELECT pg_try_advisory_lock(:key)",
        "SELECT pg_advisory_unlock(:key)",
        {"key": number},
    )


def _mysql_statements(key: str) -> tuple[str, str, dict[str, object]]:
    # Named locks take at most 64 characters.
    name = f"reec_otel_clean_{_digest(key).hex()[:40]}"
    return ("SELECT GET_LOCK(:key, 0)", "SELECT RELEASE_LOCK(:key)", {"key": name})


class _SessionLock:
    """A lock owned by one connection, kept open for as long as it is held.

    TODO: behind a pooler that hands out server sessions per transaction
    (PgBouncer in transaction mode) a session lock is not held; the lease row
    used on SQLite would work there, chosen by an option.
    """

    def __init__(self, engine: Engine, statements: tuple[str, str, dict[str, object]]) -> None:
        self._engine = engine
        self._take, self._give, self._parameters = statements
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        connection = self._engine.connect()
        try:
            taken = connection.execute(text(self._take), self._parameters).scalar()
            # End the implicit transaction: the lock belongs to the session, and
            # an open transaction would hold back the server's cleanup meanwhile.
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if taken not in (True, 1):
            connection.close()
            return False
        self._connection = connection
        return True

    def renew(self) -> bool:
        """True while the session holding the lock is still alive."""
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
        except SQLAlchemyError:
            logger.warning("The LogJob cleanup lost its lock connection.", exc_info=True)
            self.release()
            return False
        return True

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(text(self._give), self._parameters)
            connection.commit()
        except SQLAlchemyError:
            # Dropping the connection ends the session, and the session's locks with it.
            connection.invalidate()
        finally:
            connection.close()


class _LeaseRowLock:
    """A row naming the holder and when its lease ends; an expired row is taken over."""

    def __init__(self, engine: Engine, schema: str | None, key: str, lease_seconds: float) -> None:
        self._engine = engine
        self._key = key
        self._lease = lease_seconds
        self._owner = f"{socket.gethostname()[:160]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._table = Table(
            LOCK_TABLE_NAME,
            MetaData(),
            Column("lock_name", String(255), primary_key=True),
            Column("owner", String(255), nullable=False),
            Column("expires_at", Float, nullable=False),
            schema=schema,
        )
        self._held = False

    def acquire(self) -> bool:
        self._create_table()
        lock = self._table
        now = time.time()
        with self._engine.begin() as connection:
            connection.execute(
                delete(lock).where(lock.c.lock_name == self._key, lock.c.expires_at < now)
            )
            inserted = connection.execute(
                sqlite_insert(lock)
                .values(lock_name=self._key, owner=self._owner, expires_at=now + self._lease)
                .on_conflict_do_nothing(index_elements=["lock_name"])
            )
        self._held = inserted.rowcount == 1
        return self._held

    def _create_table(self) -> None:
        try:
            self._table.create(self._engine, checkfirst=True)
        except SQLAlchemyError:
            # Another process may have created it between the check and ours.
            if not inspect(self._engine).has_table(self._table.name, schema=self._table.schema):
                raise

    def renew(self) -> bool:
        if not self._held:
            return False
        lock = self._table
        with self._engine.begin() as connection:
            renewed = connection.execute(
                update(lock)
                .where(lock.c.lock_name == self._key, lock.c.owner == self._owner)
                .values(expires_at=time.time() + self._lease)
            )
        self._held = renewed.rowcount == 1
        if not self._held:
            logger.warning("The LogJob cleanup lock %r expired and was taken over.", self._key)
        return self._held

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        lock = self._table
        with self._engine.begin() as connection:
            connection.execute(
                delete(lock).where(lock.c.lock_name == self._key, lock.c.owner == self._owner)
            )
