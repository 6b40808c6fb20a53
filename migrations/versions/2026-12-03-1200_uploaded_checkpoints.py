"""uploaded checkpoints: the SHA-256 and size of the file a client uploaded, beside the stored
(canonical) file's, so evidence can be matched to the customer's own file

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Versions uploaded before keep NULL: the uploaded file was not hashed, and nothing left
    # can tell what it was (the store kept only the canonical file).
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uploaded_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("uploaded_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_model_version_uploaded_sha256"), ["uploaded_sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_version_uploaded_sha256"))
        batch_op.drop_column("uploaded_size_bytes")
        batch_op.drop_column("uploaded_sha256")
