"""cases.fabrication_kind: what kind of fabrication the investigators confirmed (optional)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a nullable column without a default: a plain ALTER TABLE ADD COLUMN on both dialects
    op.add_column("cases", sa.Column("fabrication_kind", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # SQLite drops a column that no index, constraint or trigger names in place (3.35 and later)
    op.drop_column("cases", "fabrication_kind")
