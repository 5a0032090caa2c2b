"""Settings: the LogJob options and the ``REEC_*`` environment variables.

An argument given in code wins; else the environment; else the default. A
value that cannot be read is a :class:`ConfigurationError` naming its source.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from reec_otel._errors import ConfigurationError
from reec_otel._schema import DEFAULT_TABLE_NAME, validate_identifier

__all__ = ["LogJobOptions"]

ENV_DATABASE_URL: Final = "REEC_DATABASE_URL"
ENV_APPLICATION_NAME: Final = "REEC_APPLICATION_NAME"
ENV_ENABLE_GLOBAL_DB_SAVE: Final = "REEC_ENABLE_GLOBAL_DB_SAVE"
ENV_IS_SAVE_DB: Final = "REEC_LOG_JOB_IS_SAVE_DB"
ENV_TABLE_NAME: Final = "REEC_LOG_JOB_TABLE_NAME"
ENV_SCHEMA: Final = "REEC_LOG_JOB_SCHEMA"

DEFAULT_DATABASE_URL: Final = "sqlite:///reec_jobs.db"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclasses.dataclass(frozen=True)
class LogJobOptions:
    """What is stored in the LogJob table, and where.

    Attributes:
        is_save_db: write LogJob rows at all (spans are exported either way).
        table_name: the table's name, a plain SQL identifier.
        schema: the table's schema (PostgreSQL) or database (MariaDB), or None
            for the connection's default.
    """

    is_save_db: bool = True
    table_name: str = DEFAULT_TABLE_NAME
    schema: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.is_save_db, bool):
            raise ConfigurationError(f"is_save_db must be a bool; got {self.is_save_db!r}.")
        validate_identifier(self.table_name, "LogJobOptions.table_name")
        if self.schema is not None:
            validate_identifier(self.schema, "LogJobOptions.schema")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> LogJobOptions:
        """Options from ``REEC_LOG_JOB_*`` variables, defaults for the rest."""
        env = os.environ if environ is None else environ
        table_name = env.get(ENV_TABLE_NAME) or DEFAULT_TABLE_NAME
        schema = env.get(ENV_SCHEMA) or None
        return cls(
            is_save_db=env_bool(env, ENV_IS_SAVE_DB, default=True),
            table_name=validate_identifier(
                table_name, f"The environment variable {ENV_TABLE_NAME}"
            ),
            schema=None
            if schema is None
            else validate_identifier(schema, f"The environment variable {ENV_SCHEMA}"),
        )


def env_bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """Read a boolean variable: 1/0, true/false, yes/no, on/off, any case."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        f"The environment variable {name} must be true or false (1/0, yes/no, on/off); got {raw!r}."
    )


def resolve_database_url(argument: str | URL | None, env: Mapping[str, str]) -> URL:
    """The database URL from the argument, else ``REEC_DATABASE_URL``, else SQLite."""
    if argument is not None:
        source, raw = "database_url", argument
    elif env.get(ENV_DATABASE_URL):
        source, raw = f"The environment variable {ENV_DATABASE_URL}", env[ENV_DATABASE_URL]
    else:
        source, raw = "The default database URL", DEFAULT_DATABASE_URL
    try:
        return make_url(raw)
    except (ArgumentError, ValueError):
        # The URL may hold a password: never repeat it.
        raise ConfigurationError(
            f"{source} is not a valid SQLAlchemy database URL "
            "(expected e.g. postgresql+psycopg://user@host/db)."
        ) from None


def resolve_bool(argument: bool | None, env: Mapping[str, str], name: str, default: bool) -> bool:
    if argument is not None:
        if not isinstance(argument, bool):
            raise ConfigurationError(f"The argument for {name} must be a bool; got {argument!r}.")
        return argument
    return env_bool(env, name, default=default)
