"""sweeps and sweep_results: batch sweeps, at most one result per (model sha256, input fingerprint)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_index(op.f("ix_sweeps_started_at"), "sweeps", ["started_at"])
    op.create_table(
        "sweep_results",
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("input_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("sweep_id", sa.String(length=36), nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name=op.f("fk_sweep_results_result_id_results")
        ),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_results_sweep_id_sweeps")),
        sa.PrimaryKeyConstraint("model_sha256", "input_fingerprint", name=op.f("pk_sweep_results")),
        sa.UniqueConstraint("result_id", name=op.f("uq_sweep_results_result_id")),
    )
    op.create_index(op.f("ix_sweep_results_sweep_id"), "sweep_results", ["sweep_id"])


def downgrade() -> None:
    op.drop_table("sweep_results")
    op.drop_table("sweeps")
