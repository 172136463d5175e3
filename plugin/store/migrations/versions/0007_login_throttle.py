"""login_throttle: failed review-page logins counted per user name and client address, lock-outs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", _TIME, nullable=True),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("locked_until", _TIME, nullable=True),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("kind", "key_hash", name=op.f("pk_login_throttle")),
    )
    op.create_index(op.f("ix_login_throttle_updated_at"), "login_throttle", ["updated_at"])


def downgrade() -> None:
    op.drop_table("login_throttle")
