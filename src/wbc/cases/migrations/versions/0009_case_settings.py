"""How a case's fields were analysed besides the models (``settings``: the label set, the views averaged per cell, the
colour calibration and the pixel size, as `wbc analyze` records them per field), so that its report says it: a case
made with `wbc cases create --pixel-size 0.25` and one made without it give other cells and counts. NULL for cases
stored before this revision (their reports say it was not recorded).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("settings")
