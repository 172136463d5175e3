"""The store on a real PostgreSQL (``postgresql+psycopg://``): the migrations, JSONB, the append-only
triggers, the upserts and row locks that SQLite does another way, each on a fresh database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from imagehash import ImageHash

from fusion.checks.duplicates import ImageFingerprint
from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity
from plugin.store import (
    Actor,
    ActorKind,
    AuditAction,
    CaseQueue,
    ImageArchive,
    LoginThrottle,
    ResultSource,
    Store,
    Timeline,
    TimelineEntry,
    Users,
)
from plugin.store.engine import create_store_engine, database_url
from plugin.store.migrate import alembic_config, head_revisions
from plugin.store.models import Base
from plugin.store.users import ScryptParams

pytestmark = pytest.mark.integration

SHA = "b" * 64


def _result(
    uid: str, *, flagged: bool = True, codes: tuple[str, ...] = ("identity.birth-date-mismatch",)
) -> CrossCheckResult:
    return CrossCheckResult(
        case=CaseRef(patient_id="pat-1", study_instance_uid=uid, accession_number="ACC-1"),
        scores=Scores(consistency=0.25, synthetic=0.7, overall=0.8 if flagged else 0.1),
        flagged=flagged,
        threshold=0.5,
        findings=tuple(
            Finding(
                code, Severity.CRITICAL, "a finding", (Evidence("dicom", "PatientBirthDate", uid="1.2.3"),)
            )
            for code in codes
        ),
        model=ModelInfo(name="fusion-default", version="0.2.0", sha256=SHA),
        timings_ms={"total": 12.5},
    )


def _fingerprint(seed: int, uid: str) -> ImageFingerprint:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(256, 256))
    texture = (noise / np.linalg.norm(noise)).astype(np.float32)
    return ImageFingerprint(
        uid, uid + ".1", ImageHash(rng.random((16, 16)) < 0.5), ImageHash(rng.random((8, 8)) < 0.5), texture
    )


def test_the_migrations_build_what_the_models_say_and_go_down_and_up(postgresql_url: str) -> None:
    Store.open(postgresql_url).close()
    engine = create_store_engine(database_url(postgresql_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            (revision,) = connection.execute(sa.text("SELECT version_num FROM alembic_version")).one()
            assert (revision,) == head_revisions()
            types = dict(
                connection.execute(
                    sa.text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = 'image_fingerprints'"
                    )
                ).all()
            )
            assert types["texture"] == "bytea" and types["recorded_at"] == "timestamp with time zone"
    finally:
        engine.dispose()
    config = alembic_config(postgresql_url)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    with Store.open(postgresql_url) as store:
        assert store.get_result("no-such-id") is None


def test_sweep_results_are_stored_once_and_an_amendment_is_audited(postgresql_url: str) -> None:
    with Store.open(postgresql_url) as store:
        sweep = store.start_sweep(model=_result("1").model, description="pg", studies=2)  # type: ignore[arg-type]
        items = [
            (_result("1.2.1"), {"study_instance_uid": "1.2.1"}),
            (_result("1.2.2"), {"study_instance_uid": "1.2.2"}),
        ]
        assert store.save_sweep_results(sweep, items) == 2
        assert store.save_sweep_results(sweep, items[:1]) == 0  # the primary key refuses it again
        stored = store.swept_result(SHA, next(iter(store.swept_fingerprints(SHA))))
        assert stored is not None
        amended = _result(stored.result.case.study_instance_uid, codes=("duplicate.other-patient",))
        store.save_sweep_results(sweep, [], amended=[(stored.id, amended)])
        assert store.get_result(stored.id).result == amended  # type: ignore[union-attr]
        (event,) = store.audit_events(action=AuditAction.RESULT_AMEND)
        assert event.detail == {
            "before": {"flagged": True, "overall": 0.8, "findings": ["identity.birth-date-mismatch"]},
            "after": {"flagged": True, "overall": 0.8, "findings": ["duplicate.other-patient"]},
        }


def test_the_audit_trail_and_case_history_refuse_change(postgresql_url: str) -> None:
    with Store.open(postgresql_url) as store:
        stored = store.save_result(_result("1.2.3"), source="cds")
        store.audit(AuditAction.RESULT_READ, Actor(ActorKind.USER, "alice"), result_id=stored.id)
        queue = CaseQueue(store)
        case = queue.open_case_for(stored)
        assert case is not None
        queue.update_case(case.id, actor="alice", expected_version=1, status="in-review", note="looking")
        assert len(queue.history(case.id)) >= 2  # opened, then put in review
    url = postgresql_url.replace("postgresql+psycopg://", "postgresql://")
    for statement in ("UPDATE audit_events SET outcome = 'ok'", "DELETE FROM case_events"):
        with psycopg.connect(url) as db, pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            db.execute(statement)


def test_the_record_snapshot_round_trips_through_jsonb(postgresql_url: str) -> None:
    timeline = Timeline(
        "1.2.4",
        "pat-1",
        None,
        (TimelineEntry("lab", "Observation/obs-1", "Hemoglobin", value=12.0, low=13.5, high=17.5),),
    )
    with Store.open(postgresql_url) as store:
        stored = store.save_result(_result("1.2.4"), source="rest", timeline=timeline)
        assert store.timeline(stored.id) == timeline


def test_logins_and_their_throttle(postgresql_url: str) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with Store.open(postgresql_url) as store:
        users = Users(store, params=ScryptParams(n=2**4, r=1, p=1))
        users.create_user("alice", "correct horse battery")
        assert users.verify_password("alice", "correct horse battery") is not None
        throttle = LoginThrottle(store, bytes(32))
        for _ in range(5):
            assert throttle.attempt("alice", "192.0.2.1", now=now) is None  # the row locked FOR UPDATE
        assert throttle.attempt("alice", "192.0.2.1", now=now) is not None


def test_the_image_archive_upserts_and_reads_back_bytea(postgresql_url: str) -> None:
    with Store.open(postgresql_url) as store:
        archive = ImageArchive(store)
        archive.keep(
            [("pat-a", _fingerprint(1, "1.2.5"))], source=ResultSource.SWEEP, input_fingerprints=["in-1"]
        )
        archive.keep([("pat-a", _fingerprint(2, "1.2.5"))], source=ResultSource.CDS)  # replaces it
        index = archive.index()
        assert len(index) == 1
        (match,) = index.query_fingerprint(_fingerprint(2, "1.2.9"), "pat-z")
        assert match.study_instance_uid == "1.2.5" and match.texture_correlation == pytest.approx(
            1.0, abs=1e-3
        )
        assert index.query_fingerprint(_fingerprint(1, "1.2.9"), "pat-z") == ()
        assert archive.for_inputs(["in-1"]) == {}  # the CDS scoring replaced the swept fingerprint
        archive.keep(
            [("pat-b", _fingerprint(3, "1.2.6"))], source=ResultSource.SWEEP, input_fingerprints=["in-2"]
        )
        assert archive.refresh(index) >= 1 and len(index) == 2
        assert list(archive.for_inputs(["in-2"])) == ["in-2"]
