"""cost: how a model's weights were trained (the scale of its jobs' cost reports), and a
request's budget of method work

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training", sa.JSON(), nullable=True))
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget_epochs", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.drop_column("budget_epochs")
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("training")
