"""console sessions: sign-ins to the web console, by the SHA-256 of their cookie token

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_key.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_console_session_key_id", "console_session", ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_console_session_key_id", table_name="console_session")
    op.drop_table("console_session")
