"""The audit trail: events recorded and queried, and never changed or removed."""

from __future__ import annotations

import inspect
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from plugin.store import MAX_AUDIT_DETAIL_BYTES, Actor, ActorKind, AuditAction, AuditEvent, Store

EHR = Actor(ActorKind.CDS_CLIENT, "https://ehr.example")
UID = "1.2.826.0.1.3680043.8.498.1"


def test_audit_round_trip(store: Store, clock) -> None:
    event = store.audit(
        "cds.call",
        EHR,
        study_instance_uid=UID,
        model_version="0.2.0",
        outcome="ok",
        status_code=200,
        detail={"hook": "patient-view", "indicator": "warning", "cards": 1},
    )
    assert isinstance(event, AuditEvent)
    assert event.id >= 1
    assert event.action == AuditAction.CDS_CALL
    assert event.actor == EHR
    assert event.at.tzinfo is not None
    assert store.audit_events(10) == [event]


def test_actor_kind_accepts_its_string() -> None:
    assert Actor("api-key", "reporting").kind is ActorKind.API_KEY  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'robot'"):
        Actor("robot")  # type: ignore[arg-type]


def test_audit_events_filters_and_pages(store: Store, clock, make_result) -> None:
    result = store.save_result(make_result(UID), source="cds")
    system = Actor(ActorKind.SYSTEM)
    e1 = store.audit(AuditAction.RESULT_CREATE, system, result_id=result.id, study_instance_uid=UID)
    e2 = store.audit(AuditAction.CDS_CALL, EHR, study_instance_uid=UID, status_code=200)
    e3 = store.audit(AuditAction.RESULT_READ, Actor(ActorKind.API_KEY, "reporting"), result_id=result.id)
    e4 = store.audit(
        AuditAction.CDS_CALL, Actor(ActorKind.CDS_CLIENT, "https://other.example"), status_code=401
    )

    assert store.audit_events() == [e4, e3, e2, e1]
    assert store.audit_events(2) == [e4, e3]
    assert store.audit_events(2, before_id=e3.id) == [e2, e1]
    assert store.audit_events(action="cds.call") == [e4, e2]
    assert store.audit_events(actor=EHR) == [e2]
    assert store.audit_events(actor=Actor(ActorKind.CDS_CLIENT)) == [e4, e2]
    assert store.audit_events(result_id=result.id) == [e3, e1]
    assert store.audit_events(study_instance_uid=UID) == [e2, e1]
    assert store.audit_events(since=e2.at, until=e4.at) == [e3, e2]
    assert store.audit_events(since=e4.at + timedelta(seconds=1)) == []


def test_detail_must_be_small_json(store: Store) -> None:
    with pytest.raises(ValueError, match="over 4096"):
        store.audit("writeback", EHR, detail={"x": "y" * MAX_AUDIT_DETAIL_BYTES})
    with pytest.raises(TypeError):
        store.audit("writeback", EHR, detail={"x": object()})
    with pytest.raises(ValueError, match=r"'result\.delete'"):
        store.audit("result.delete", EHR)
    assert store.audit_events() == []


def test_the_store_offers_no_way_to_change_the_trail() -> None:
    public = {name for name, _ in inspect.getmembers(Store) if not name.startswith("_")}
    assert not {name for name in public if any(v in name for v in ("update", "delete", "remove", "edit"))}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'ok'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE id = 1",
    ],
)
def test_the_database_refuses_to_change_the_trail(store: Store, db_path: Path, statement: str) -> None:
    event = store.audit("result.read", EHR, outcome="refused", status_code=403)
    with sqlite3.connect(db_path) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)
    assert store.audit_events() == [event]
