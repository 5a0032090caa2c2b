"""Settings: the LogJob options and the ``REEC_*`` environment variables.

An argument given in code wins; else the environment; else the default. A
value that cannot be read is a :class:`ConfigurationError` naming its source.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from reec_otel import _rules
from reec_otel._attributes import StateJob
from reec_otel._errors import ConfigurationError
from reec_otel._schedule import validate_cron, validate_time_zone
from reec_otel._schema import DEFAULT_TABLE_NAME, validate_identifier

__all__ = ["LogJobOptions"]

ENV_DATABASE_URL: Final = "REEC_DATABASE_URL"
ENV_APPLICATION_NAME: Final = "REEC_APPLICATION_NAME"
ENV_ENABLE_GLOBAL_DB_SAVE: Final = "REEC_ENABLE_GLOBAL_DB_SAVE"
ENV_IS_SAVE_DB: Final = "REEC_LOG_JOB_IS_SAVE_DB"
ENV_TABLE_NAME: Final = "REEC_LOG_JOB_TABLE_NAME"
ENV_SCHEMA: Final = "REEC_LOG_JOB_SCHEMA"
ENV_ENABLE_CLEAN: Final = "REEC_LOG_JOB_ENABLE_CLEAN"
ENV_DELETE_DAYS: Final = "REEC_LOG_JOB_DELETE_DAYS"
ENV_DELETE_BATCH: Final = "REEC_LOG_JOB_DELETE_BATCH"
ENV_CLEAN_CRON: Final = "REEC_LOG_JOB_CLEAN_CRON"
ENV_CLEAN_TIME_ZONE: Final = "REEC_LOG_JOB_CLEAN_TIME_ZONE"
ENV_DELETE_DAYS_BY_STATE: Final = "REEC_LOG_JOB_DELETE_DAYS_BY_STATE"
ENV_DELETE_DAYS_BY_NAME: Final = "REEC_LOG_JOB_DELETE_DAYS_BY_NAME"

DEFAULT_DELETE_DAYS: Final = 10
DEFAULT_DELETE_BATCH: Final = 1_000
MAX_DELETE_BATCH: Final = 100_000
DEFAULT_CLEAN_CRON: Final = "0 2 * * *"
DEFAULT_CLEAN_TIME_ZONE: Final = "UTC"

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
        enable_clean: `configure()` starts the cleanup scheduler in-process.
        delete_days: rows older than this many days go (by their UTC date).
        delete_batch: rows deleted per transaction at most.
        clean_cron: when the scheduler runs a round: a five-field cron expression.
        clean_time_zone: the IANA time zone *clean_cron* is read in.
        delete_days_by_state: days per final state of a run, instead of *delete_days*.
        delete_days_by_name: days per job name; beats a state rule.
    """

    is_save_db: bool = True
    table_name: str = DEFAULT_TABLE_NAME
    schema: str | None = None
    enable_clean: bool = True
    delete_days: int = DEFAULT_DELETE_DAYS
    delete_batch: int = DEFAULT_DELETE_BATCH
    clean_cron: str = DEFAULT_CLEAN_CRON
    clean_time_zone: str = DEFAULT_CLEAN_TIME_ZONE
    # Read-only mappings; left out of the hash, which they cannot take part in.
    delete_days_by_state: Mapping[StateJob, int] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    delete_days_by_name: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.is_save_db, bool):
            raise ConfigurationError(f"is_save_db must be a bool; got {self.is_save_db!r}.")
        validate_identifier(self.table_name, "LogJobOptions.table_name")
        if self.schema is not None:
            validate_identifier(self.schema, "LogJobOptions.schema")
        self._check_retention()

    def _check_retention(self) -> None:
        if not isinstance(self.enable_clean, bool):
            raise ConfigurationError(f"enable_clean must be a bool; got {self.enable_clean!r}.")
        _rules.check_days(self.delete_days, "LogJobOptions.delete_days")
        batch = self.delete_batch
        if (
            isinstance(batch, bool)
            or not isinstance(batch, int)
            or not 1 <= batch <= MAX_DELETE_BATCH
        ):
            raise ConfigurationError(
                f"LogJobOptions.delete_batch must be a whole number of rows from 1 to "
                f"{MAX_DELETE_BATCH}; got {batch!r}."
            )
        validate_cron(self.clean_cron, "LogJobOptions.clean_cron")
        validate_time_zone(self.clean_time_zone, "LogJobOptions.clean_time_zone")
        by_state = _rules.state_rules(
            self.delete_days_by_state, "LogJobOptions.delete_days_by_state"
        )
        by_name = _rules.name_rules(self.delete_days_by_name, "LogJobOptions.delete_days_by_name")
        object.__setattr__(self, "delete_days_by_state", by_state)
        object.__setattr__(self, "delete_days_by_name", by_name)

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
            **_retention_from_environment(env),
        )


def _retention_from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The retention options set in the environment; unset ones keep their defaults."""
    found: dict[str, Any] = {"enable_clean": env_bool(env, ENV_ENABLE_CLEAN, default=True)}
    readers: dict[str, tuple[str, Callable[[str, str], Any]]] = {
        ENV_DELETE_DAYS: ("delete_days", _rules.parse_days),
        ENV_DELETE_BATCH: ("delete_batch", _parse_batch),
        ENV_CLEAN_CRON: ("clean_cron", validate_cron),
        ENV_CLEAN_TIME_ZONE: ("clean_time_zone", validate_time_zone),
        ENV_DELETE_DAYS_BY_STATE: ("delete_days_by_state", _state_rules),
        ENV_DELETE_DAYS_BY_NAME: ("delete_days_by_name", _name_rules),
    }
    for variable, (field, read) in readers.items():
        raw = env.get(variable)
        if raw is not None and raw.strip():
            found[field] = read(raw.strip(), f"The environment variable {variable}")
    return found


def _parse_batch(raw: str, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_DELETE_BATCH:
        raise ConfigurationError(
            f"{what} must be a whole number of rows from 1 to {MAX_DELETE_BATCH}; got {raw!r}."
        )
    return int(raw)


def _state_rules(raw: str, what: str) -> Mapping[StateJob, int]:
    return _rules.state_rules(_rules.parse_day_rules(raw, what), what)


def _name_rules(raw: str, what: str) -> Mapping[str, int]:
    return _rules.name_rules(_rules.parse_day_rules(raw, what), what)


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


UNNAMED_APPLICATION: Final = "unknown_service"


def application_name_of_service(service: object) -> str:
    """The application name an OpenTelemetry service name stands for.

    The SDK's fallback service name names the interpreter
    ("unknown_service:python3"), which differs between a script and the command
    line; every such name stands for the one name ``unknown_service``, so that
    rows of one unnamed application are never split.
    """
    if not service or str(service).startswith(UNNAMED_APPLICATION):
        return UNNAMED_APPLICATION
    return str(service)[:255]


def default_application_name(env: Mapping[str, str]) -> str:
    """``REEC_APPLICATION_NAME``, else the service name the environment gives."""
    name = env.get(ENV_APPLICATION_NAME)
    if name:
        return name
    from opentelemetry.sdk.resources import Resource

    return application_name_of_service(Resource.create().attributes.get("service.name"))


def validate_application_name(name: object, source: str) -> str:
    """Return *name* if it fits the ``application_name`` column, else raise."""
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ConfigurationError(
            f"{source} must be a non-empty string of at most 255 characters; got {name!r}."
        )
    return name


def resolve_bool(argument: bool | None, env: Mapping[str, str], name: str, default: bool) -> bool:
    if argument is not None:
        if not isinstance(argument, bool):
            raise ConfigurationError(f"The argument for {name} must be a bool; got {argument!r}.")
        return argument
    return env_bool(env, name, default=default)
