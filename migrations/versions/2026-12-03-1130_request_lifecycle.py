"""lifecycle: a request an operator closed with a reason, or that a later request satisfied

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 11:30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("closed_by", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("close_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "satisfied_by_request_id",
                sa.String(36),
                sa.ForeignKey("deletion_request.id", name="fk_request_satisfied_by"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.drop_column("satisfied_by_request_id")
        batch_op.drop_column("close_reason")
        batch_op.drop_column("closed_by")
        batch_op.drop_column("closed_at")
