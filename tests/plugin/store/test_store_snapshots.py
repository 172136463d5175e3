"""Record snapshots in the store: saved with a result (one transaction), or after it; with a sweep's
results (skipped with them); read back; never twice; unreadable ones said so."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugin.errors import DuplicateSnapshot, ResultNotFound, SnapshotUnreadable
from plugin.store import Store, Timeline, TimelineEntry

UID = "1.2.826.0.1.3680043.8.498.1"
STUDY = datetime(2024, 5, 10, 9, 30, tzinfo=UTC)


def _timeline(uid: str = UID, value: float = 18.4) -> Timeline:
    return Timeline(
        study_instance_uid=uid,
        patient_id="pat-1",
        study_date=STUDY,
        entries=(
            TimelineEntry(
                "lab", "Observation/obs-1", "Hemoglobin", STUDY, code="http://loinc.org|718-7",
                value=value, unit="g/dL", low=13.5, high=17.5, interpretation="H",
            ),
            TimelineEntry("condition", "Condition/cond-1", "Pneumonia", STUDY, status="active"),
        ),
        sex="female",
        age_years=43,
    )  # fmt: skip


def _rows(db_path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT result_id, schema, entries FROM record_snapshots ORDER BY result_id"))


def test_saved_with_the_result_and_read_back(store: Store, make_result, db_path: Path) -> None:
    timeline = _timeline()
    stored = store.save_result(make_result(UID), source="rest", timeline=timeline)
    assert store.timeline(stored.id) == timeline
    assert _rows(db_path) == [(stored.id, "imaging-crosscheck/timeline/1", 2)]
    without = store.save_result(make_result(UID), source="rest")
    assert store.timeline(without.id) is None
    assert store.timeline("00000000-0000-0000-0000-000000000000") is None


def test_saved_after_the_result_once_only(store: Store, make_result) -> None:
    stored = store.save_result(make_result(UID), source="ingest")
    store.save_timeline(stored.id, _timeline())
    assert store.timeline(stored.id) == _timeline()
    with pytest.raises(DuplicateSnapshot, match="never replaced"):
        store.save_timeline(stored.id, _timeline(value=1.0))
    assert store.timeline(stored.id) == _timeline()  # the first one stays
    with pytest.raises(ResultNotFound, match="not stored"):
        store.save_timeline("no-such-result", _timeline())


def test_a_result_refused_takes_its_snapshot_with_it(store: Store, make_result, db_path: Path) -> None:
    with pytest.raises(TypeError):
        store.save_result(make_result(UID), source="rest", inputs={"n": 1}, timeline=_timeline())  # type: ignore[dict-item]
    assert _rows(db_path) == []


def test_sweep_results_with_their_snapshots(store: Store, make_result, db_path: Path) -> None:
    from fusion.result import ModelInfo

    sweep = store.start_sweep(model=ModelInfo("m", "1", "a" * 64), description="folder", studies=3)
    items = [(make_result(f"{UID}.{n}"), {"study": f"{UID}.{n}"}) for n in range(3)]
    timelines = [_timeline(f"{UID}.0"), None, _timeline(f"{UID}.2")]
    assert store.save_sweep_results(sweep, items, timelines=timelines) == 3
    by_uid = {}
    for uid in (f"{UID}.{n}" for n in range(3)):
        found = store.result_for_inputs({"study": uid}, "a" * 64)
        assert found is not None
        by_uid[uid] = found
    assert store.timeline(by_uid[f"{UID}.0"].id) == timelines[0]
    assert store.timeline(by_uid[f"{UID}.1"].id) is None
    assert store.timeline(by_uid[f"{UID}.2"].id) == timelines[2]
    assert len(_rows(db_path)) == 2
    # again, with one new input among them: the stored ones are skipped with their snapshots
    again = [*items, (make_result(f"{UID}.3"), {"study": f"{UID}.3"})]
    retimed = [_timeline(value=1.0), _timeline(value=1.0), _timeline(value=1.0), _timeline(f"{UID}.3")]
    assert store.save_sweep_results(sweep, again, timelines=retimed) == 1
    assert store.timeline(by_uid[f"{UID}.0"].id) == timelines[0]
    assert store.timeline(by_uid[f"{UID}.1"].id) is None
    new = store.result_for_inputs({"study": f"{UID}.3"}, "a" * 64)
    assert new is not None and store.timeline(new.id) == _timeline(f"{UID}.3")
    assert len(_rows(db_path)) == 3
    with pytest.raises(ValueError, match="one per result"):
        store.save_sweep_results(sweep, items, timelines=[None])


def test_an_unreadable_snapshot_is_said_so(store: Store, make_result, db_path: Path) -> None:
    stored = store.save_result(make_result(UID), source="rest", timeline=_timeline())
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE record_snapshots SET snapshot = json_set(snapshot, '$.schema', 'elsewhere/9')")
    with pytest.raises(SnapshotUnreadable, match=stored.id):
        store.timeline(stored.id)
