"""Training labels from the investigators' dispositions and the clinicians' CDS Hooks feedback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from plugin.cds.cards import OVERRIDE_REASON_SYSTEM, OVERRIDE_REASONS
from plugin.store import CaseQueue, LabelSource, OverrideReason, Store, TrainingLabel, Users
from plugin.store.cases import CLEAN_OVERRIDE_CODES
from plugin.store.cases import OVERRIDE_REASON_SYSTEM as STORE_SYSTEM
from plugin.store.users import ScryptParams

SHA_B = "b" * 64


@pytest.fixture
def queue(store: Store) -> CaseQueue:
    Users(store, params=ScryptParams(n=2**4, r=1, p=1)).create_user("alice", "correct horse battery")
    return CaseQueue(store)


def _dispose(store: Store, queue: CaseQueue, make_result, uid: str, status: str | None, **kwargs):
    stored = store.save_result(make_result(uid, **kwargs), source="sweep")
    case = queue.open_case_for(stored)
    assert case is not None
    if status is not None:
        queue.update_case(
            case.id, actor="alice", expected_version=1, status=status, note="checked with the PACS"
        )
    return stored


def _override(store: Store, result_id: str | None, code: str, system: str | None = OVERRIDE_REASON_SYSTEM):
    store.record_feedback(
        service_id="crosscheck-patient-view",
        card_uuid=f"card-{code}-{result_id}",
        outcome="overridden",
        outcome_timestamp=datetime.now(UTC),
        override_reason=OverrideReason(code, system),
        result_id=result_id,
    )


def test_labels_from_dispositions_and_feedback(store: Store, queue: CaseQueue, make_result) -> None:
    fab = _dispose(store, queue, make_result, "1.1", "confirmed-fabricated", patient_id="p1")
    gen = _dispose(store, queue, make_result, "1.2", "confirmed-genuine", patient_id="p2", sha256=SHA_B)
    _dispose(store, queue, make_result, "1.3", "not-determinable")
    _dispose(store, queue, make_result, "1.4", None)  # still new
    verified = store.save_result(make_result("1.5", patient_id="p5"), source="cds")
    _override(store, verified.id, "verified-with-modality")
    other = store.save_result(make_result("1.6"), source="cds")
    _override(store, other.id, "known-device-change")  # not a statement about the image
    _override(store, other.id, "other")
    _override(store, None, "correct-patient-confirmed")  # a Card the store cannot tie to a result
    foreign = store.save_result(make_result("1.7"), source="cds")
    _override(store, foreign.id, "verified-with-modality", system="http://example.org/other-reasons")
    # a clinician's "verified" does not outweigh the investigators' "fabricated"
    _override(store, fab.id, "correct-patient-confirmed")

    assert queue.training_labels() == [
        TrainingLabel("1.1", "p1", "manipulated", LabelSource.DISPOSITION, "a" * 64, fab.id),
        TrainingLabel("1.2", "p2", "clean", LabelSource.DISPOSITION, SHA_B, gen.id),
        TrainingLabel("1.5", "p5", "clean", LabelSource.CDS_FEEDBACK, "a" * 64, verified.id),
    ]
    assert queue.training_labels()[0].to_json() == {
        "study_instance_uid": "1.1",
        "patient_id": "p1",
        "label": "manipulated",
        "fabrication_kind": None,
        "source": "disposition",
        "model_sha256": "a" * 64,
        "result_id": fab.id,
    }


def test_a_reopened_case_gives_no_label(store: Store, queue: CaseQueue, make_result) -> None:
    stored = _dispose(store, queue, make_result, "2.1", "confirmed-genuine")
    case = queue.case_for_study("2.1")
    assert case is not None and case.result_id == stored.id
    queue.update_case(case.id, actor="alice", expected_version=case.version, status="in-review", note="doubt")
    assert queue.training_labels() == []


def test_the_override_codes_are_the_ones_the_cards_offer() -> None:
    assert STORE_SYSTEM == OVERRIDE_REASON_SYSTEM
    assert CLEAN_OVERRIDE_CODES <= {reason.code for reason in OVERRIDE_REASONS}
