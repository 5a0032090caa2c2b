"""Alembic's entry point for the package's own migrations.

Run only through :mod:`reec_otel._migrations`, which passes the target table
and either a connection (online) or a URL (offline, printing SQL).
"""

from __future__ import annotations

from alembic import context

config = context.config
target = config.attributes["target"]
version_options = config.attributes["version_options"]
migration_arguments = {"table_name": target.table_name, "schema": target.schema}

if context.is_offline_mode():
    context.configure(url=config.attributes["url"], literal_binds=True, **version_options)
else:
    context.configure(connection=config.attributes["connection"], **version_options)

with context.begin_transaction():
    context.run_migrations(**migration_arguments)
