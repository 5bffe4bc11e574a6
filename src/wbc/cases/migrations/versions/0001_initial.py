"""The first schema: cases, fields, cells (the model's and the reviewer's call), corrections (audit trail).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("model_id", sa.String(length=300), nullable=False),
        sa.Column("segmenter_id", sa.String(length=300), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("review_threshold", sa.Float(), nullable=False),
        sa.Column("signed_by", sa.String(length=120), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("name", name=op.f("uq_cases_name")),
    )
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=500), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("image_png", sa.LargeBinary(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_fields_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fields")),
    )
    op.create_index(op.f("ix_fields_case_id"), "fields", ["case_id"])
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("field_id", sa.Integer(), nullable=False),
        sa.Column("cell_no", sa.Integer(), nullable=False),
        sa.Column("x0", sa.Integer(), nullable=False),
        sa.Column("y0", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Integer(), nullable=False),
        sa.Column("y1", sa.Integer(), nullable=False),
        sa.Column("outline", sa.JSON(), nullable=False),
        sa.Column("nucleus", sa.JSON(), nullable=False),
        sa.Column("crop_png", sa.LargeBinary(), nullable=False),
        sa.Column("model_label", sa.String(length=40), nullable=False),
        sa.Column("model_confidence", sa.Float(), nullable=False),
        sa.Column("model_review", sa.Boolean(), nullable=False),
        sa.Column("model_reasons", sa.JSON(), nullable=False),
        sa.Column("model_probabilities", sa.JSON(), nullable=False),
        sa.Column("ood", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(length=40), nullable=True),
        sa.Column("reviewed_by", sa.String(length=120), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_cells_case_id_cases")),
        sa.ForeignKeyConstraint(["field_id"], ["fields.id"], name=op.f("fk_cells_field_id_fields")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cells")),
    )
    op.create_index(op.f("ix_cells_case_id"), "cells", ["case_id"])
    op.create_index(op.f("ix_cells_field_id"), "cells", ["field_id"])
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("old_label", sa.String(length=40), nullable=False),
        sa.Column("new_label", sa.String(length=40), nullable=False),
        sa.Column("user", sa.String(length=120), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_corrections_case_id_cases")),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"], name=op.f("fk_corrections_cell_id_cells")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrections")),
    )
    op.create_index(op.f("ix_corrections_case_id"), "corrections", ["case_id"])
    op.create_index(op.f("ix_corrections_cell_id"), "corrections", ["cell_id"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("cells")
    op.drop_table("fields")
    op.drop_table("cases")
