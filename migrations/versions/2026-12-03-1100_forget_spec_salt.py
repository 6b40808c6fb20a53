"""evidence: the secret salt a request's forget-specification hash commits with

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Requests made before keep a null salt: their receipts name the unsalted hash.
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("forget_spec_salt", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deletion_request", schema=None) as batch_op:
        batch_op.drop_column("forget_spec_salt")
