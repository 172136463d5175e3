"""The case queue: cases opened once per flagged study, filtered and sorted, changed under
optimistic locking with every change in the history, and comments that are only superseded."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugin.errors import CaseChangeRefused, CaseNotFound, StaleCase
from plugin.store import (
    AuditAction,
    CaseComment,
    CaseEvent,
    CaseQueue,
    CaseStatus,
    Store,
    StoredResult,
    UserRole,
    Users,
)
from plugin.store.cases import TRANSITIONS
from plugin.store.users import ScryptParams

UID = "1.2.826.0.1.3680043.8.498.1"
FAST = ScryptParams(n=2**4, r=1, p=1)  # the tests' hashes: not for production


@pytest.fixture
def queue(store: Store) -> CaseQueue:
    return CaseQueue(store)


@pytest.fixture
def users(store: Store) -> Users:
    users = Users(store, params=FAST)
    users.create_user("alice", "correct horse battery")
    users.create_user("bob", "correct horse battery", role=UserRole.ADMIN)
    return users


def _save(store: Store, make_result, uid: str = UID, **kwargs) -> StoredResult:
    return store.save_result(make_result(uid, **kwargs), source="sweep")


def test_a_flagged_result_opens_one_case(store: Store, queue: CaseQueue, make_result) -> None:
    stored = _save(store, make_result, overall=0.8)
    case = queue.open_case_for(stored, cost_weight=2.5)
    assert case is not None
    assert (case.status, case.assignee, case.version) == (CaseStatus.NEW, None, 1)
    assert (case.result_id, case.study_instance_uid) == (stored.id, UID)
    assert (case.patient_id, case.accession_number) == ("pat-1", "ACC-1")
    assert case.rank == pytest.approx(0.8 * 2.5)
    assert queue.open_case_for(stored) == case  # idempotent
    assert queue.open_case_for(stored, cost_weight=9.0) == case
    assert queue.cases() == [case]
    assert queue.case(case.id) == case
    assert queue.case_for_study(UID) == case
    (event,) = queue.history(case.id)
    assert isinstance(event, CaseEvent)
    assert (event.field, event.old, event.new, event.actor) == ("status", None, "new", "system")
    assert [e.action for e in store.audit_events()] == [AuditAction.CASE_OPEN]


def test_an_unflagged_result_opens_nothing(store: Store, queue: CaseQueue, make_result) -> None:
    assert queue.open_case_for(_save(store, make_result, flagged=False, overall=0.1)) is None
    assert queue.cases() == []


def test_an_unstored_result_is_refused(store: Store, queue: CaseQueue, make_result) -> None:
    stored = _save(store, make_result)
    ghost = StoredResult("not-a-result", stored.created_at, stored.result, stored.source, {}, None)
    with pytest.raises(CaseChangeRefused, match="not stored"):
        queue.open_case_for(ghost)
    with pytest.raises(ValueError, match="positive"):
        queue.open_case_for(stored, cost_weight=0.0)


def test_a_newer_flagged_result_moves_the_case_and_keeps_its_status(
    store: Store, queue: CaseQueue, users: Users, make_result
) -> None:
    first = _save(store, make_result, overall=0.7)
    case = queue.open_case_for(first, cost_weight=2.0)
    assert case is not None
    case = queue.update_case(case.id, actor="alice", expected_version=1, status="in-review", assignee="alice")
    newer = _save(store, make_result, overall=0.9, sha256="b" * 64)
    moved = queue.open_case_for(newer, actor="sweep")
    assert moved is not None and moved.id == case.id
    assert (moved.result_id, moved.score_overall, moved.cost_weight) == (newer.id, 0.9, 2.0)
    assert (moved.status, moved.assignee, moved.version) == (CaseStatus.IN_REVIEW, "alice", 3)
    changes = [(e.field, e.old, e.new) for e in queue.history(case.id) if isinstance(e, CaseEvent)][-2:]
    assert changes == [("result_id", first.id, newer.id), ("score_overall", "0.7", "0.9")]
    # an older result arriving late, or a newer one not flagged, leaves it alone
    assert queue.open_case_for(first) == moved
    assert queue.open_case_for(_save(store, make_result, overall=0.2, flagged=False)) is None
    assert queue.case(case.id) == moved
    assert len(queue.cases()) == 1


def test_filters_search_and_order(store: Store, queue: CaseQueue, users: Users, make_result) -> None:
    opened = []
    for n, (overall, weight, patient, accession) in enumerate(
        [(0.9, 1.0, "pat-A", "ACC-100"), (0.6, 3.0, "pat-B", "ACC-200"), (0.75, 1.0, "PAT-c", None)]
    ):
        stored = _save(
            store, make_result, f"1.2.3.{n}", overall=overall, patient_id=patient, accession=accession
        )
        case = queue.open_case_for(stored, cost_weight=weight)
        assert case is not None
        opened.append(case)
    a, b, c = opened
    assert [x.id for x in queue.cases()] == [b.id, a.id, c.id]  # 1.8, 0.9, 0.75
    assert [x.id for x in queue.cases(order_by="score")] == [a.id, c.id, b.id]
    assert [x.id for x in queue.cases(order_by="created")] == [c.id, b.id, a.id]
    assert [x.id for x in queue.cases(limit=1, offset=1)] == [a.id]
    b = queue.update_case(b.id, actor="bob", expected_version=1, status="in-review", assignee="Alice")
    assert b.assignee == "alice"
    assert queue.cases(status="in-review") == [b]
    assert [x.id for x in queue.cases(status=["new", CaseStatus.IN_REVIEW])] == [b.id, a.id, c.id]
    assert queue.cases(assignee="ALICE") == [b]
    assert [x.id for x in queue.cases(unassigned=True)] == [a.id, c.id]
    assert [x.id for x in queue.cases(search="pat-")] == [b.id, a.id, c.id]
    assert [x.id for x in queue.cases(search="pat-c")] == [c.id]  # case-insensitive
    assert [x.id for x in queue.cases(search="ACC-2")] == [b.id]
    assert [x.id for x in queue.cases(search="1.2.3.0")] == [a.id]
    assert queue.cases(search="ACC-%") == []  # LIKE wildcards are taken literally
    assert queue.count_cases() == 3
    assert queue.count_cases(status="new", search="pat") == 2
    with pytest.raises(ValueError, match="'nope'"):
        queue.cases(order_by="nope")
    with pytest.raises(ValueError, match="limit"):
        queue.cases(limit=0)
    with pytest.raises(ValueError, match="'open'"):
        queue.cases(status="open")


def test_a_stale_version_is_refused_and_nothing_is_written(
    store: Store, queue: CaseQueue, users: Users, make_result
) -> None:
    case = queue.open_case_for(_save(store, make_result))
    assert case is not None
    first = queue.update_case(case.id, actor="alice", expected_version=1, assignee="alice")
    assert first.version == 2
    with pytest.raises(StaleCase, match="version 1, now 2") as info:
        queue.update_case(case.id, actor="bob", expected_version=1, assignee="bob")
    assert info.value.current_version == 2
    assert queue.case(case.id) == first
    assert len(queue.history(case.id)) == 2
    with pytest.raises(CaseNotFound):
        queue.update_case(999, actor="bob", expected_version=1, status="in-review")


def test_status_rules(store: Store, queue: CaseQueue, users: Users, make_result) -> None:
    case = queue.open_case_for(_save(store, make_result))
    assert case is not None
    with pytest.raises(CaseChangeRefused, match="needs a note"):
        queue.update_case(case.id, actor="alice", expected_version=1, status="confirmed-fabricated")
    closed = queue.update_case(
        case.id,
        actor="alice",
        expected_version=1,
        status="confirmed-fabricated",
        note="PACS has no such study",
    )
    with pytest.raises(CaseChangeRefused, match="can become in-review, not new"):
        queue.update_case(case.id, actor="alice", expected_version=closed.version, status="new", note="x")
    with pytest.raises(CaseChangeRefused, match="reopening"):
        queue.update_case(case.id, actor="alice", expected_version=closed.version, status="in-review")
    reopened = queue.update_case(
        case.id, actor="bob", expected_version=closed.version, status="in-review", note="new evidence"
    )
    assert reopened.status is CaseStatus.IN_REVIEW
    with pytest.raises(ValueError, match="nothing to change"):
        queue.update_case(case.id, actor="bob", expected_version=reopened.version, status="in-review")
    with pytest.raises(CaseChangeRefused, match="not an active user"):
        queue.update_case(case.id, actor="bob", expected_version=reopened.version, assignee="mallory")
    users.deactivate_user("alice")
    with pytest.raises(CaseChangeRefused, match="not an active user"):
        queue.update_case(case.id, actor="bob", expected_version=reopened.version, assignee="alice")
    # every disposition can be reopened, and only to in-review
    assert {s: TRANSITIONS[s] for s in CaseStatus if s.closed} == {
        s: {CaseStatus.IN_REVIEW} for s in CaseStatus if s.closed
    }


def test_history_is_time_ordered_with_comments_superseded_never_replaced(
    store: Store, queue: CaseQueue, users: Users, make_result
) -> None:
    case = queue.open_case_for(_save(store, make_result))
    assert case is not None
    first = queue.comment(case.id, "alice", "  header date looks edited ")
    assert first.text == "header date looks edited"
    case = queue.update_case(
        case.id, actor="alice", expected_version=1, status="in-review", assignee="alice", note="mine"
    )
    fix = queue.comment(case.id, "alice", "the acquisition date looks edited", supersedes=first.id)
    with pytest.raises(CaseChangeRefused, match="superseded already"):
        queue.comment(case.id, "bob", "another fix", supersedes=first.id)
    with pytest.raises(CaseNotFound, match="no comment 999"):
        queue.comment(case.id, "bob", "x", supersedes=999)
    with pytest.raises(CaseNotFound):
        queue.comment(999, "bob", "x")
    with pytest.raises(ValueError, match="empty"):
        queue.comment(case.id, "bob", "   ")

    history = queue.history(case.id)
    assert [type(e).__name__ for e in history] == [
        "CaseEvent",
        "CaseComment",
        "CaseEvent",
        "CaseEvent",
        "CaseComment",
    ]
    assert [e.at for e in history] == sorted(e.at for e in history)
    status, assignee = history[2], history[3]
    assert isinstance(status, CaseEvent) and isinstance(assignee, CaseEvent)
    assert (status.field, status.old, status.new, status.note, status.actor) == (
        "status",
        "new",
        "in-review",
        "mine",
        "alice",
    )
    assert (assignee.field, assignee.old, assignee.new, assignee.note) == ("assignee", None, "alice", None)
    old, new = history[1], history[4]
    assert isinstance(old, CaseComment) and isinstance(new, CaseComment)
    assert (old.id, old.superseded_by, old.text) == (first.id, fix.id, "header date looks edited")
    assert (new.supersedes, new.superseded_by) == (first.id, None)
    actions = [e.action for e in reversed(store.audit_events())]
    assert actions == ["case.open", "case.comment", "case.update", "case.comment"]
    assert all("edited" not in str(e.detail) for e in store.audit_events())  # no free text in the trail
    with pytest.raises(CaseNotFound):
        queue.history(999)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE case_events SET new = 'confirmed-genuine'",
        "DELETE FROM case_events",
        "UPDATE case_comments SET text = 'nothing to see'",
        "DELETE FROM case_comments",
    ],
)
def test_the_database_refuses_to_change_the_history(
    store: Store, queue: CaseQueue, make_result, db_path: Path, statement: str
) -> None:
    case = queue.open_case_for(_save(store, make_result))
    assert case is not None
    queue.comment(case.id, "alice", "looks re-filed")
    before = queue.history(case.id)
    with sqlite3.connect(db_path) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)
    assert queue.history(case.id) == before


def test_times_are_the_store_clock(store: Store, queue: CaseQueue, make_result, clock) -> None:
    clock.now = datetime(2026, 4, 1, tzinfo=UTC)
    case = queue.open_case_for(_save(store, make_result))
    assert case is not None and case.created_at.tzinfo is not None
    assert case.created_at == case.updated_at
