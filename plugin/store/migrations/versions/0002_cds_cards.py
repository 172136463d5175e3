"""cds_cards: the Cards issued, each tied to the result it came from

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cds_cards",
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=255), nullable=False),
        sa.Column("hook_instance", sa.String(length=255), nullable=True),
        sa.Column("result_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("indicator", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name=op.f("fk_cds_cards_result_id_results")),
        sa.PrimaryKeyConstraint("card_uuid", name=op.f("pk_cds_cards")),
    )
    op.create_index(op.f("ix_cds_cards_result_id"), "cds_cards", ["result_id"])


def downgrade() -> None:
    op.drop_table("cds_cards")
