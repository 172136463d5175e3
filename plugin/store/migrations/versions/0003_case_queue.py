"""the case queue: cases, case_events and case_comments (append-only), users

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from plugin.store.ddl import append_only_triggers, drop_append_only_triggers

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_APPEND_ONLY = ("case_events", "case_comments")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("user_name", name=op.f("uq_users_user_name")),
    )

    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=255), nullable=True),
        sa.Column("accession_number", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("assignee", sa.String(length=64), nullable=True),
        sa.Column("score_overall", sa.Float(), nullable=False),
        sa.Column("cost_weight", sa.Float(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name=op.f("fk_cases_result_id_results")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("result_id", name=op.f("uq_cases_result_id")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_cases_study_instance_uid")),
    )
    op.create_index(op.f("ix_cases_accession_number"), "cases", ["accession_number"])
    op.create_index(op.f("ix_cases_assignee"), "cases", ["assignee"])
    op.create_index(op.f("ix_cases_created_at"), "cases", ["created_at"])
    op.create_index(op.f("ix_cases_patient_id"), "cases", ["patient_id"])
    op.create_index(op.f("ix_cases_status"), "cases", ["status"])

    op.create_table(
        "case_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_events_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_events")),
    )
    op.create_index(op.f("ix_case_events_case_id"), "case_events", ["case_id"])

    op.create_table(
        "case_comments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("author", sa.String(length=255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_comments_case_id_cases")),
        sa.ForeignKeyConstraint(
            ["supersedes_id"],
            ["case_comments.id"],
            name=op.f("fk_case_comments_supersedes_id_case_comments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_comments")),
        sa.UniqueConstraint("supersedes_id", name=op.f("uq_case_comments_supersedes_id")),
    )
    op.create_index(op.f("ix_case_comments_case_id"), "case_comments", ["case_id"])

    dialect = op.get_context().dialect.name
    for table in _APPEND_ONLY:
        for statement in append_only_triggers(table, dialect):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    for table in _APPEND_ONLY:
        for statement in drop_append_only_triggers(table, dialect):
            op.execute(statement)
    op.drop_table("case_comments")
    op.drop_table("case_events")
    op.drop_table("cases")
    op.drop_table("users")
