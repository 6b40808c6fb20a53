"""deletion requests carry acceptance thresholds, a reference and the relearn-time option

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acceptance", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reference", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "measure_relearn_time", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.drop_column("measure_relearn_time")
        batch_op.drop_column("reference")
        batch_op.drop_column("acceptance")
