"""The classes a case's differential counts: the label set it was analysed among (``wbc serve --classes 5part``: five),
less platelets. The ``classes`` column stays the reviewer's menu (every class of the model a smear cell can be); a
case's differential showed that menu's rows, so a five-part case listed ig and erythroblast at 0, counts its lab
never makes. NULL for cases stored before this revision: their differential shows ``classes``, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("counted", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("counted")
