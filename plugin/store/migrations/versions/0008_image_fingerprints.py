"""image_fingerprints: the perceptual hashes and fine texture of every study scored or swept

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_fingerprints",
        sa.Column("patient_key", sa.String(length=128), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("phash", sa.LargeBinary(), nullable=False),
        sa.Column("dhash", sa.LargeBinary(), nullable=False),
        sa.Column("texture", sa.LargeBinary(), nullable=True),
        sa.Column("texture_scale", sa.Float(), nullable=True),
        sa.Column("dicom_patient_id", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("input_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_key", "study_instance_uid", name=op.f("pk_image_fingerprints")),
    )
    op.create_index(
        op.f("ix_image_fingerprints_input_fingerprint"), "image_fingerprints", ["input_fingerprint"]
    )
    op.create_index(op.f("ix_image_fingerprints_recorded_at"), "image_fingerprints", ["recorded_at"])


def downgrade() -> None:
    op.drop_table("image_fingerprints")
