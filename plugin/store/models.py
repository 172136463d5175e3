"""The store's tables as SQLAlchemy ORM models (the migrations in ``migrations/versions`` create them).

``results``        every CrossCheckResult stored; updated only where a batch sweep amends a study's
                 duplicate findings (an image it met later repeats this one's), each amendment
                 audited (``result.amend``) with the flag, score and finding codes it replaced
``cds_feedback``   CDS Hooks Feedback entries, one row per entry (a Card may get several)
``audit_events``   the audit trail, append-only (database triggers refuse UPDATE and DELETE)
``cds_jti``        the ``jti`` of CDS Client JWTs already used, until they expire
``cds_cards``      the Cards this service answered hook calls with, and the result each came from
``cases``          the fraud investigators' case queue: one case per flagged study (its newest flagged
                 result), with the kind of fabrication confirmed (migration 0006)
``case_events``    every change of a case (who, when, which field, old and new value), append-only
``case_comments``  investigators' comments on a case, append-only: a correction supersedes, never replaces
``users``          investigator logins (scrypt password hashes with their salt and parameters)
``sweeps``         each batch sweep started: when, with which model, how many studies it found
``sweep_results``  the result of each swept input, at most one per (model sha256, input fingerprint)
``record_snapshots`` the record as it was when a result was scored (a Timeline), one per result
``login_throttle`` login attempts counted per user name and per client address (keyed hashes, never
                 in clear) and their lock-outs: what refuses password guessing on the review page
``image_fingerprints`` the perceptual hashes and fine texture of every study scored or swept, by
                 patient: the archive the duplicate check searches (migration 0008)

Timestamps are timezone-aware UTC in Python: SQLite stores them as UTC text, PostgreSQL as
``timestamp with time zone``. JSON columns are ``JSONB`` on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "JSON_TYPE",
    "NAMING_CONVENTION",
    "AuditEventRow",
    "Base",
    "CardRow",
    "CaseCommentRow",
    "CaseEventRow",
    "CaseRow",
    "FeedbackRow",
    "ImageFingerprintRow",
    "JtiRow",
    "LoginThrottleRow",
    "RecordSnapshotRow",
    "ResultRow",
    "SweepResultRow",
    "SweepRow",
    "UTCDateTime",
    "UserRow",
]

#: Constraint and index names every migration reproduces (SQLite's batch mode needs names).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on SQLite, JSONB on PostgreSQL; Python None is SQL NULL (not JSON null).
JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends; naive datetimes are refused on the way in."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the store takes timezone-aware datetimes (e.g. datetime.now(UTC))")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class ResultRow(Base):
    """A stored CrossCheckResult: the columns a query needs, and the full JSON in ``result_json``."""

    __tablename__ = "results"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(sa.String(64))
    patient_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    accession_number: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    model_name: Mapped[str | None] = mapped_column(sa.String(255))
    model_version: Mapped[str | None] = mapped_column(sa.String(64))
    model_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    schema_version: Mapped[str] = mapped_column(sa.String(16))
    score_overall: Mapped[float] = mapped_column(sa.Float)
    score_consistency: Mapped[float | None] = mapped_column(sa.Float)
    score_synthetic: Mapped[float | None] = mapped_column(sa.Float)
    flagged: Mapped[bool] = mapped_column(sa.Boolean)
    threshold: Mapped[float] = mapped_column(sa.Float)
    result_json: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    source: Mapped[str] = mapped_column(sa.String(16))
    input_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    inputs: Mapped[dict[str, str] | None] = mapped_column(JSON_TYPE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (
        # latest_result(): equality on the first two, newest first on the third
        sa.Index(None, "study_instance_uid", "model_sha256", "created_at"),
        # a sweep's "is this input done with this model?"
        sa.Index(None, "input_fingerprint", "model_sha256"),
    )


class FeedbackRow(Base):
    """One CDS Hooks Feedback entry (``card``, ``outcome``, ``acceptedSuggestions``,
    ``overrideReason``, ``outcomeTimestamp``) with who sent it and when it arrived."""

    __tablename__ = "cds_feedback"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(sa.String(255))
    card_uuid: Mapped[str] = mapped_column(sa.String(255), index=True)
    outcome: Mapped[str] = mapped_column(sa.String(16))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON_TYPE)
    override_reason_system: Mapped[str | None] = mapped_column(sa.Text)
    override_reason_code: Mapped[str | None] = mapped_column(sa.String(255))
    override_reason_display: Mapped[str | None] = mapped_column(sa.Text)
    user_comment: Mapped[str | None] = mapped_column(sa.Text)
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    client_iss: Mapped[str | None] = mapped_column(sa.Text)
    client_sub: Mapped[str | None] = mapped_column(sa.Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    result_id: Mapped[str | None] = mapped_column(sa.ForeignKey("results.id"), index=True)


class AuditEventRow(Base):
    """One audit event; the migrations add triggers that refuse UPDATE and DELETE on this table."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor_kind: Mapped[str] = mapped_column(sa.String(16))
    actor_id: Mapped[str | None] = mapped_column(sa.Text)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    # no foreign key: an event is recorded even for a result id that does not exist
    result_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    model_version: Mapped[str | None] = mapped_column(sa.String(64))
    outcome: Mapped[str | None] = mapped_column(sa.String(64))
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)


class JtiRow(Base):
    """A CDS Client JWT's ``jti`` seen from issuer ``iss``, kept until ``expires_at``."""

    __tablename__ = "cds_jti"

    iss: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    jti: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class CardRow(Base):
    """A CDS Hooks Card this service answered a hook call with: what ties a Feedback (which names
    only the Card's ``uuid``) to the result the Card came from."""

    __tablename__ = "cds_cards"

    card_uuid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(sa.String(255))
    hook_instance: Mapped[str | None] = mapped_column(sa.String(255))
    # NULL for a "running" or "consistent" Card: it may cover no single result
    result_id: Mapped[str | None] = mapped_column(sa.ForeignKey("results.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    indicator: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CaseRow(Base):
    """A case of the investigators' queue: the flagged result it stands for (the study's newest), the
    identifiers it is searched by, its status and assignee, and its rank (``score_overall`` times
    ``cost_weight``). ``version`` grows with every change: an update names the version it read."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[str] = mapped_column(sa.ForeignKey("results.id"), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(sa.String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    accession_number: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    status: Mapped[str] = mapped_column(sa.String(32), index=True)
    assignee: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    score_overall: Mapped[float] = mapped_column(sa.Float)
    cost_weight: Mapped[float] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(sa.Integer)
    #: what kind of fabrication the investigators confirmed (``plugin.store.cases.FabricationKind``),
    #: only while the status is ``confirmed-fabricated``; NULL when they did not say
    fabrication_kind: Mapped[str | None] = mapped_column(sa.String(32))


class CaseEventRow(Base):
    """One change of a case: ``field`` went from ``old`` to ``new`` (as text), by ``actor``, with an
    optional ``note``. The migrations add triggers that refuse UPDATE and DELETE on this table."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(sa.String(255))
    field: Mapped[str] = mapped_column(sa.String(32))
    old: Mapped[str | None] = mapped_column(sa.Text)
    new: Mapped[str | None] = mapped_column(sa.Text)
    note: Mapped[str | None] = mapped_column(sa.Text)


class CaseCommentRow(Base):
    """A comment on a case; a correction is a new comment that ``supersedes`` the old one (at most
    once: the unique constraint). Append-only, as ``case_events``."""

    __tablename__ = "case_comments"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    author: Mapped[str] = mapped_column(sa.String(255))
    text: Mapped[str] = mapped_column(sa.Text)
    supersedes_id: Mapped[int | None] = mapped_column(sa.ForeignKey("case_comments.id"), unique=True)


class UserRow(Base):
    """An investigator's login: ``password_hash`` is ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64),
    so the parameters can be raised later without invalidating older hashes."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    user_name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(sa.Text)
    password_hash: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.String(16))
    active: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SweepRow(Base):
    """A batch sweep (``crosscheck sweep``): when it started and ended, the model, what it found.
    ``description`` names the input (a folder, server URLs without credentials), never a patient."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    model_version: Mapped[str] = mapped_column(sa.String(64))
    model_sha256: Mapped[str] = mapped_column(sa.String(64))
    description: Mapped[str] = mapped_column(sa.Text)
    studies: Mapped[int] = mapped_column(sa.Integer)


class SweepResultRow(Base):
    """The result a sweep stored for one input: the primary key (model sha256, input fingerprint)
    is what keeps a resumed or concurrent sweep from storing an input twice."""

    __tablename__ = "sweep_results"

    model_sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    input_fingerprint: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(sa.ForeignKey("sweeps.id"), index=True)
    result_id: Mapped[str] = mapped_column(sa.ForeignKey("results.id"), unique=True)


class RecordSnapshotRow(Base):
    """The record snapshot of a result (`plugin.store.snapshots.Timeline` as JSON, its ``schema``
    in a column of its own): written with the result, never changed; patient data, like the result."""

    __tablename__ = "record_snapshots"

    result_id: Mapped[str] = mapped_column(sa.ForeignKey("results.id"), primary_key=True)
    schema: Mapped[str] = mapped_column(sa.String(64))
    entries: Mapped[int] = mapped_column(sa.Integer)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginThrottleRow(Base):
    """Login attempts counted against one user name or one client address (``kind``), named by a
    keyed hash (``key_hash``, HMAC-SHA256: never the name or address in clear): the attempts not
    known to have succeeded since ``window_start``, the lock-outs so far (the backoff's exponent)
    and the current one's end (`plugin.store.throttle`)."""

    __tablename__ = "login_throttle"

    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lockouts: Mapped[int] = mapped_column(sa.Integer)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ImageFingerprintRow(Base):
    """The perceptual hashes (packed bits) and the int8 fine texture of a study's image under the
    patient it was filed under (`fusion.checks.duplicates.PackedFingerprint`), written by the
    service and by sweeps, replaced when the study is scored again (`plugin.store.ImageArchive`).
    ``patient_key`` (and ``dicom_patient_id``, the header's PatientID) is patient data, like the
    results' patient ids; ``version`` is the
    fingerprint's (`fusion.checks.duplicates.FINGERPRINT_VERSION`); ``input_fingerprint`` names the
    swept input the image came from (None for the service's)."""

    __tablename__ = "image_fingerprints"

    patient_key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int] = mapped_column(sa.Integer)
    phash: Mapped[bytes] = mapped_column(sa.LargeBinary)
    dhash: Mapped[bytes] = mapped_column(sa.LargeBinary)
    texture: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    texture_scale: Mapped[float | None] = mapped_column(sa.Float)
    dicom_patient_id: Mapped[str | None] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(16))
    input_fingerprint: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
