"""The differentials a case was signed off with (``signed_numbers``: the reviewed and the model's, and the wbc version
that computed them), so that its reports print what the signer attested to, not what a later wbc's counting rules
make of the same calls (wbc 0.28.0 moved erythroblasts outside the total: a case signed at 20 WBCs, 50 % neutrophils,
re-printed as 15 WBCs, 66.7 %). NULL for cases open or signed off before this revision (their reports say the numbers
are re-computed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("signed_numbers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("signed_numbers")
