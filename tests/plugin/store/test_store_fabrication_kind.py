"""The kind of fabrication a disposition confirmed: migration 0006, the queue's rules, the training
label and its JSON form."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from plugin.errors import CaseChangeRefused
from plugin.store import (
    Case,
    CaseEvent,
    CaseQueue,
    CaseStatus,
    FabricationKind,
    LabelSource,
    Store,
    TrainingLabel,
    Users,
)
from plugin.store.migrate import alembic_config
from plugin.store.users import ScryptParams


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


@pytest.fixture
def queue(store: Store) -> CaseQueue:
    Users(store, params=ScryptParams(n=2**4, r=1, p=1)).create_user("alice", "correct horse battery")
    return CaseQueue(store)


def _open(store: Store, queue: CaseQueue, make_result, uid: str = "1.1"):  # type: ignore[no-untyped-def]
    case = queue.open_case_for(store.save_result(make_result(uid), source="sweep"))
    assert case is not None
    return case


def _change(queue: CaseQueue, case_id: int, version: int = 1, **changes: Any) -> Case:
    """``update_case`` as alice."""
    return queue.update_case(case_id, actor="alice", expected_version=version, **changes)


def _kind_events(queue: CaseQueue, case_id: int) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (e.old, e.new, e.note)
        for e in queue.history(case_id)
        if isinstance(e, CaseEvent) and e.field == "fabrication_kind"
    ]


def test_0006_adds_the_column_and_down_drops_it_keeping_the_cases(db_path: Path, make_result) -> None:
    with Store.open(db_path) as store:
        queue = CaseQueue(store)
        Users(store, params=ScryptParams(n=2**4, r=1, p=1)).create_user("alice", "correct horse battery")
        case = _open(store, queue, make_result)
        _change(queue, case.id, status="confirmed-fabricated", fabrication_kind="synthetic", note="no log")
    assert "fabrication_kind" in _columns(db_path, "cases")
    config = alembic_config(db_path)
    command.downgrade(config, "0005")
    assert "fabrication_kind" not in _columns(db_path, "cases")
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT status FROM cases").fetchall() == [("confirmed-fabricated",)]
        triggers = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"case_events_no_update", "case_events_no_delete"} <= triggers  # the case tables untouched
    with Store.open(db_path) as store:  # upgrades again: the kind of a case disposed before is not known
        (again,) = CaseQueue(store).cases()
        assert again.status is CaseStatus.CONFIRMED_FABRICATED and again.fabrication_kind is None
        assert [label.fabrication_kind for label in CaseQueue(store).training_labels()] == [None]
    assert "0006" in [
        r.revision for r in ScriptDirectory.from_config(alembic_config(db_path)).walk_revisions()
    ]


def test_0006_as_postgresql_sql() -> None:
    config = alembic_config("postgresql+psycopg://crosscheck@db.example/crosscheck")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "0005:0006", sql=True)
    sql = config.output_buffer.getvalue()
    assert "ALTER TABLE cases ADD COLUMN fabrication_kind VARCHAR(32)" in sql
    assert "UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005'" in sql


def test_the_kind_goes_with_the_disposition_into_the_history_and_the_label(
    store: Store, queue: CaseQueue, make_result
) -> None:
    case = _open(store, queue, make_result)
    done = _change(
        queue,
        case.id,
        status=CaseStatus.CONFIRMED_FABRICATED,
        fabrication_kind=FabricationKind.WRONG_PATIENT,
        note="the patient was abroad that day",
    )
    assert done.fabrication_kind is FabricationKind.WRONG_PATIENT
    again = queue.case(case.id)
    assert again is not None and again.fabrication_kind is FabricationKind.WRONG_PATIENT
    assert _kind_events(queue, case.id) == [(None, "wrong-patient", None)]  # the note is on the status
    (label,) = queue.training_labels()
    assert label.label == "manipulated" and label.fabrication_kind is FabricationKind.WRONG_PATIENT
    assert label.to_json()["fabrication_kind"] == "wrong-patient"
    assert TrainingLabel.from_json(label.to_json()) == label


def test_correcting_clearing_and_reopening(store: Store, queue: CaseQueue, make_result) -> None:
    case = _open(store, queue, make_result)
    case = _change(queue, case.id, status="confirmed-fabricated", note="generated pixels")
    assert case.fabrication_kind is None  # optional
    assert queue.training_labels()[0].fabrication_kind is None
    with pytest.raises(CaseChangeRefused, match="needs a note"):
        _change(queue, case.id, case.version, fabrication_kind="tampered")
    case = _change(queue, case.id, case.version, fabrication_kind="tampered", note="a nodule pasted in")
    assert case.fabrication_kind is FabricationKind.TAMPERED
    with pytest.raises(ValueError, match="nothing to change"):
        _change(queue, case.id, case.version, fabrication_kind="tampered", note="again")
    case = _change(queue, case.id, case.version, clear_fabrication_kind=True, note="not sure")
    assert case.fabrication_kind is None
    case = _change(queue, case.id, case.version, fabrication_kind="other", note="unclear")
    reopened = _change(queue, case.id, case.version, status="in-review", note="new evidence")
    assert reopened.fabrication_kind is None  # leaving confirmed-fabricated loses the kind
    assert _kind_events(queue, case.id) == [
        (None, "tampered", "a nodule pasted in"),
        ("tampered", None, "not sure"),
        (None, "other", "unclear"),
        ("other", None, None),  # with the reopening (its note is on the status event)
    ]
    assert queue.training_labels() == []


def test_a_kind_without_confirmed_fabricated_is_refused(store: Store, queue: CaseQueue, make_result) -> None:
    case = _open(store, queue, make_result)
    for status in (None, "in-review", "confirmed-genuine", "not-determinable"):
        with pytest.raises(CaseChangeRefused, match="goes with a confirmed-fabricated disposition"):
            _change(queue, case.id, status=status, fabrication_kind="synthetic", note="n")
    with pytest.raises(ValueError, match="not both"):
        _change(
            queue,
            case.id,
            status="confirmed-fabricated",
            fabrication_kind="synthetic",
            clear_fabrication_kind=True,
        )
    with pytest.raises(ValueError, match="fabrication_kind must be one of synthetic, tampered"):
        _change(queue, case.id, status="confirmed-fabricated", fabrication_kind="fake")
    unchanged = queue.case(case.id)
    assert unchanged is not None and unchanged.version == 1 and unchanged.status is CaseStatus.NEW


def test_label_json_round_trip_and_refusals() -> None:
    label = TrainingLabel(
        "1.2", "p", "manipulated", LabelSource.DISPOSITION, "a" * 64, "r", FabricationKind.OTHER
    )
    assert TrainingLabel.from_json(label.to_json()) == label
    old_file_entry = {k: v for k, v in label.to_json().items() if k != "fabrication_kind"}
    assert TrainingLabel.from_json(old_file_entry).fabrication_kind is None  # files written before 0006
    minimal = TrainingLabel.from_json({"study_instance_uid": "1.3", "label": "clean"})
    assert minimal.source is LabelSource.DISPOSITION and minimal.patient_id is None
    for entry, problem in (
        ([], "JSON object"),
        ({"label": "clean"}, "study_instance_uid"),
        ({"study_instance_uid": "1.3", "label": "fake"}, "label must be"),
        (
            {"study_instance_uid": "1.3", "label": "manipulated", "fabrication_kind": "gan"},
            "fabrication_kind",
        ),
        (
            {"study_instance_uid": "1.3", "label": "clean", "fabrication_kind": "synthetic"},
            "only a 'manipulated'",
        ),
        ({"study_instance_uid": "1.3", "label": "clean", "source": "rumour"}, "source must be"),
        ({"study_instance_uid": "1.3", "label": "clean", "patient_id": 7}, "patient_id"),
    ):
        with pytest.raises(ValueError, match=problem):
            TrainingLabel.from_json(entry)
