"""results, CDS feedback, the audit trail (append-only), used CDS jti

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from plugin.store.ddl import append_only_triggers, drop_append_only_triggers

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=255), nullable=True),
        sa.Column("accession_number", sa.String(length=255), nullable=True),
        sa.Column("model_name", sa.String(length=255), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("schema_version", sa.String(length=16), nullable=False),
        sa.Column("score_overall", sa.Float(), nullable=False),
        sa.Column("score_consistency", sa.Float(), nullable=True),
        sa.Column("score_synthetic", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("result_json", _JSON, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("input_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("inputs", _JSON, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
    )
    op.create_index(op.f("ix_results_accession_number"), "results", ["accession_number"])
    op.create_index(op.f("ix_results_created_at"), "results", ["created_at"])
    op.create_index(
        op.f("ix_results_input_fingerprint_model_sha256"), "results", ["input_fingerprint", "model_sha256"]
    )
    op.create_index(op.f("ix_results_patient_id"), "results", ["patient_id"])
    op.create_index(
        op.f("ix_results_study_instance_uid_model_sha256_created_at"),
        "results",
        ["study_instance_uid", "model_sha256", "created_at"],
    )

    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.String(length=255), nullable=False),
        sa.Column("card_uuid", sa.String(length=255), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("accepted_suggestions", _JSON, nullable=False),
        sa.Column("override_reason_system", sa.Text(), nullable=True),
        sa.Column("override_reason_code", sa.String(length=255), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", _TIME, nullable=False),
        sa.Column("client_iss", sa.Text(), nullable=True),
        sa.Column("client_sub", sa.Text(), nullable=True),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name=op.f("fk_cds_feedback_result_id_results")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_feedback")),
    )
    op.create_index(op.f("ix_cds_feedback_card_uuid"), "cds_feedback", ["card_uuid"])
    op.create_index(op.f("ix_cds_feedback_received_at"), "cds_feedback", ["received_at"])
    op.create_index(op.f("ix_cds_feedback_result_id"), "cds_feedback", ["result_id"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("result_id", sa.String(length=36), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("detail", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"])
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_result_id"), "audit_events", ["result_id"])
    op.create_index(op.f("ix_audit_events_study_instance_uid"), "audit_events", ["study_instance_uid"])
    for statement in append_only_triggers("audit_events", op.get_context().dialect.name):
        op.execute(statement)

    op.create_table(
        "cds_jti",
        sa.Column("iss", sa.String(length=255), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("iss", "jti", name=op.f("pk_cds_jti")),
    )
    op.create_index(op.f("ix_cds_jti_expires_at"), "cds_jti", ["expires_at"])


def downgrade() -> None:
    op.drop_table("cds_jti")
    for statement in drop_append_only_triggers("audit_events", op.get_context().dialect.name):
        op.execute(statement)
    op.drop_table("audit_events")
    op.drop_table("cds_feedback")
    op.drop_table("results")
