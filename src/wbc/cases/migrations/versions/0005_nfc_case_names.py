"""Case names in Unicode NFC, as wbc now writes and looks them up: "Müller-01" typed on macOS (NFD) and on Windows
(NFC) is one name. A stored name that would become another case's name is left as it is (that case stays
reachable by its id). Data only; no schema change. Offline (``--sql``) there is nothing to read: nothing is emitted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if context.is_offline_mode():
        return
    cases = sa.table("cases", sa.column("id", sa.Integer), sa.column("name", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(cases.c.id, cases.c.name).order_by(cases.c.id)).all()
    taken = {name for _, name in rows}
    for case_id, name in rows:
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name and nfc not in taken:
            conn.execute(cases.update().where(cases.c.id == case_id).values(name=nfc))
            taken.discard(name)
            taken.add(nfc)


def downgrade() -> None:
    pass  # the names' earlier forms are not kept; NFC names are valid names for an older wbc too
