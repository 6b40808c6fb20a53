"""coalescing and drift: a model may let requests waiting on one version run as one joint job,
and declare a drift budget; each version a job produces records its drift

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 16:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model", sa.Column("coalescing", sa.JSON(), nullable=True))
    op.add_column("model", sa.Column("drift_budget", sa.JSON(), nullable=True))
    op.add_column("model_version", sa.Column("drift", sa.JSON(), nullable=True))
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("joint_job_id", sa.String(length=36), nullable=True))
        batch.create_foreign_key("fk_job_joint_job_id_job", "job", ["joint_job_id"], ["id"])
        batch.create_index("ix_job_joint_job_id", ["joint_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_joint_job_id")
        batch.drop_constraint("fk_job_joint_job_id_job", type_="foreignkey")
        batch.drop_column("joint_job_id")
        batch.drop_column("not_before")
    op.drop_column("model_version", "drift")
    op.drop_column("model", "drift_budget")
    op.drop_column("model", "coalescing")
