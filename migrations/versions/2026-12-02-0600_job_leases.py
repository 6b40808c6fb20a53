"""job leases: the claim's lease id, the running worker's heartbeat, the last send to the broker

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 06:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs already running get their last update as their heartbeat: the sweeper judges them by it
    # (a worker of the older version writes no heartbeat, only progress).
    op.execute("UPDATE job SET heartbeat_at = updated_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("lease_id")
