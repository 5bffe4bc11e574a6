"""What each field's colours were calibrated from before its cells were classified (wbc 0.11.0: the field's
red cells mapped onto the training lab's), so a reviewer can see it; NULL for fields classified as they came and
for fields stored before this revision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fields") as batch:
        batch.add_column(sa.Column("colour_calibration", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fields") as batch:
        batch.drop_column("colour_calibration")
