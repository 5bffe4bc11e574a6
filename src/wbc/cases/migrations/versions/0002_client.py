"""Which authenticated client made each change and the sign-off (the API key's short digest, ``anonymous``
on an open server, ``local`` from the library or the command line), beside the typed user name.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(sa.Column("client", sa.String(length=60), nullable=True))
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("signed_client", sa.String(length=60), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("signed_client")
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("client")
