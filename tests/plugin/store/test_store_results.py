"""Results: saved, read back by id, newest per study and model, found again by their inputs."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugin.store import ResultSource, Store, StoredResult, input_fingerprint

UID = "1.2.826.0.1.3680043.8.498.1"
OTHER_UID = "1.2.826.0.1.3680043.8.498.2"
SHA_A = "a" * 64
SHA_B = "b" * 64


def test_save_and_get_round_trip(store: Store, make_result, clock) -> None:
    result = make_result(UID)
    stored = store.save_result(
        result, source="cds", inputs={"study": UID, "dicomweb": "http://pacs/dicom-web"}
    )
    assert isinstance(stored, StoredResult)
    assert stored.source is ResultSource.CDS
    assert stored.created_at.tzinfo is UTC
    again = store.get_result(stored.id)
    assert again == stored
    assert again is not None
    assert again.result.to_json() == result.to_json()
    assert again.result.findings == result.findings
    assert again.inputs == {"study": UID, "dicomweb": "http://pacs/dicom-web"}
    assert again.input_fingerprint == input_fingerprint({"dicomweb": "http://pacs/dicom-web", "study": UID})


def test_columns_hold_what_queries_need(store: Store, make_result, db_path: Path) -> None:
    stored = store.save_result(make_result(UID, overall=0.9), source=ResultSource.SWEEP)
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT study_instance_uid, patient_id, accession_number, model_name, model_version,"
            " model_sha256, schema_version, score_overall, score_consistency, score_synthetic, flagged,"
            " threshold, source, input_fingerprint, inputs FROM results WHERE id = ?",
            (stored.id,),
        ).fetchone()
    assert row == (UID, "pat-1", "ACC-1", "fusion-default", "0.2.0", SHA_A, "1.0", 0.9, 0.25, 0.7, 1, 0.5,
                   "sweep", None, None)  # fmt: skip


def test_unknown_id_is_none(store: Store) -> None:
    assert store.get_result("00000000-0000-0000-0000-000000000000") is None


def test_latest_result_per_study_and_model(store: Store, make_result) -> None:
    first = store.save_result(make_result(UID, overall=0.1), source="ingest")
    newest = store.save_result(make_result(UID, overall=0.2), source="cds")
    other_model = store.save_result(make_result(UID, sha256=SHA_B, overall=0.3), source="cds")
    store.save_result(make_result(OTHER_UID, overall=0.4), source="cds")
    assert first.created_at < newest.created_at

    latest = store.latest_result(UID, SHA_A)
    assert latest is not None
    assert latest.id == newest.id
    assert latest.result.scores.overall == 0.2
    by_b = store.latest_result(UID, SHA_B)
    assert by_b is not None and by_b.id == other_model.id
    assert store.latest_result(UID, "c" * 64) is None
    assert store.latest_result("1.2.3.4", SHA_A) is None


def test_latest_result_without_a_model(store: Store, make_result) -> None:
    store.save_result(make_result(UID), source="cli")
    rules_only = store.save_result(make_result(UID, sha256=None), source="cli")
    found = store.latest_result(UID, None)
    assert found is not None
    assert found.id == rules_only.id
    assert found.result.model is None


def test_result_for_inputs_ignores_their_order(store: Store, make_result) -> None:
    inputs = {"bundle": "cohort/p1/bundle.json", "dicom": "cohort/p1/dicom"}
    store.save_result(make_result(UID), source="sweep", inputs=inputs)
    again = store.save_result(make_result(UID), source="sweep", inputs=inputs)
    found = store.result_for_inputs({"dicom": "cohort/p1/dicom", "bundle": "cohort/p1/bundle.json"}, SHA_A)
    assert found is not None and found.id == again.id
    assert store.result_for_inputs(inputs, SHA_B) is None
    assert store.result_for_inputs({"bundle": "cohort/p2/bundle.json"}, SHA_A) is None


def test_bad_arguments(store: Store, make_result) -> None:
    with pytest.raises(ValueError, match="'batch'"):
        store.save_result(make_result(), source="batch")
    with pytest.raises(TypeError, match="strings"):
        store.save_result(make_result(), source="cli", inputs={"n": 3})  # type: ignore[dict-item]


def test_timestamps_come_back_in_utc(db_path: Path, make_result) -> None:
    from datetime import timedelta, timezone

    paris = timezone(timedelta(hours=1))
    with Store.open(db_path, clock=lambda: datetime(2026, 3, 1, 13, 0, tzinfo=paris)) as store:
        stored = store.save_result(make_result(), source="cli")
        again = store.get_result(stored.id)
    assert again is not None
    assert again.created_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert again.created_at.tzinfo is UTC


def test_a_naive_clock_is_refused(db_path: Path, make_result) -> None:
    with (
        Store.open(db_path, clock=lambda: datetime(2026, 3, 1, 12, 0)) as store,
        pytest.raises(ValueError, match="timezone-aware"),
    ):
        store.save_result(make_result(), source="cli")


def test_results_survive_reopening(db_path: Path, make_result) -> None:
    with Store.open(db_path) as store:
        stored = store.save_result(make_result(), source="rest")
    with Store.open(db_path, migrate=False) as store:
        assert store.get_result(stored.id) == stored
