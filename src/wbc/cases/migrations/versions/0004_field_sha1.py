"""Each field's file content (SHA-1 of the bytes read), so the same image is not added to a case twice; NULL for
fields stored before this revision and for fields added from pixels without a file.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fields") as batch:
        batch.add_column(sa.Column("sha1", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fields") as batch:
        batch.drop_column("sha1")
