"""The LogJob table as first released.

Frozen here on purpose: later changes to the table come as new revisions, and
a test holds this baseline equal to the table the writer creates.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from reec_otel._schema import object_name

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def _long_text() -> Any:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade(*, table_name: str, schema: str | None) -> None:
    op.create_table(
        table_name,
        sa.Column(
            "id_log_job",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("application_name", sa.String(255), nullable=False),
        sa.Column("name_job", sa.String(255), nullable=False),
        sa.Column("state_job", sa.String(16), nullable=False),
        sa.Column("trace_identifier", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("exception_type", sa.String(255), nullable=True),
        sa.Column("exception", _long_text(), nullable=True),
        sa.Column("inner_exception", _long_text(), nullable=True),
        sa.Column("stack_trace", _long_text(), nullable=True),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("message", _long_text(), nullable=True),
        sa.Column("create_user", sa.String(255), nullable=True),
        sa.Column(
            "create_date",
            sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("create_date_only", sa.Date(), nullable=False),
        sa.UniqueConstraint(
            "span_id", "state_job", name=object_name("uq", table_name, "span_state")
        ),
        schema=schema,
    )
    indexes = {
        object_name("ix", table_name, "app_date"): ["application_name", "create_date_only"],
        object_name("ix", table_name, "trace"): ["trace_identifier"],
        object_name("ix", table_name, "app_state_date"): [
            "application_name",
            "state_job",
            "create_date",
        ],
    }
    for name, columns in indexes.items():
        op.create_index(name, table_name, columns, schema=schema)


def downgrade(*, table_name: str, schema: str | None) -> None:
    op.drop_table(table_name, schema=schema)
