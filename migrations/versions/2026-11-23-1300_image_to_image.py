"""image-to-image models: declared encoder and transform, proxy retain sets, job artifacts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("encoder", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("transform", sa.JSON(), nullable=True))
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retain_dataset_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_deletion_request_retain_dataset_id_dataset"),
            "dataset", ["retain_dataset_id"], ["id"],
        )
    op.create_table(
        "job_artifact",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("storage_key", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_job_artifact_job_id_job")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_artifact")),
        sa.UniqueConstraint("job_id", "name", name=op.f("uq_job_artifact_job_id")),
    )
    with op.batch_alter_table("job_artifact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_artifact_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_artifact", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_artifact_job_id"))
    op.drop_table("job_artifact")
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_deletion_request_retain_dataset_id_dataset"), type_="foreignkey"
        )
        batch_op.drop_column("retain_dataset_id")
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("transform")
        batch_op.drop_column("encoder")
