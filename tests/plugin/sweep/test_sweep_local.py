"""``crosscheck sweep`` on this machine: results as ``check`` gives them, resume, export, errors."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from plugin.cli import main
from plugin.cohort import load_cohort
from plugin.store import CaseQueue, Store
from plugin.sweep import run_sweep, units_from_folder

Rows = Callable[[Path], list[tuple[str, str, float]]]


def _sweep(path: Path, db_dir: Path, *extra: str) -> int:
    return main(["sweep", str(path), "--data-dir", str(db_dir), "--workers", "2", "-q", *extra])


def test_sweep_stores_one_result_per_study_like_check(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep_rows: Rows
) -> None:
    assert _sweep(cohort, tmp_path, "--batch-size", "4") == 0
    rows = sweep_rows(tmp_path / "crosscheck.db")
    expected = {e.study_instance_uid for e in load_cohort(cohort).entries}
    assert sorted(r[0] for r in rows) == sorted(expected)
    capsys.readouterr()
    args = ["check", "--bundle", str(cohort / "bundles"), "--dicom", str(cohort / "dicom")]
    assert main([*args, "--site", str(cohort / "site.json"), "--format", "json"]) == 0
    checked = {}
    for line in capsys.readouterr().out.splitlines():
        r = json.loads(line)
        checked[r["case"]["study_instance_uid"]] = r
    with sqlite3.connect(tmp_path / "crosscheck.db") as con:
        stored = [json.loads(js) for (js,) in con.execute("SELECT result_json FROM results")]
    for r in stored:
        c = checked[r["case"]["study_instance_uid"]]
        assert r["case"] == c["case"]
        assert r["scores"]["overall"] == pytest.approx(c["scores"]["overall"], abs=1e-4)
        assert [f["code"] for f in r["findings"]] == [f["code"] for f in c["findings"]]
        assert r["model"]["version"] and r["model"]["sha256"]
    flagged = {r["case"]["study_instance_uid"] for r in stored if r["flagged"]}
    with Store.open(tmp_path / "crosscheck.db") as store:
        cases = CaseQueue(store).cases(limit=100)
        with sqlite3.connect(tmp_path / "crosscheck.db") as con:
            ids = [i for (i,) in con.execute("SELECT id FROM results")]
        timelines = [store.timeline(i) for i in ids]
    assert {c.study_instance_uid for c in cases} == flagged  # every flagged result is in the queue
    assert all(t is not None and t.entries for t in timelines)  # each with its record snapshot
    for c in cases:  # what the review page shows of a case: its images, and the model's heatmap
        assert any((tmp_path / "images" / c.study_instance_uid).glob("*.dcm"))
    with sqlite3.connect(tmp_path / "crosscheck.db") as con:
        by_model = [
            i
            for i, js in con.execute("SELECT id, result_json FROM results WHERE flagged")
            if any(f["code"].startswith("model.") for f in json.loads(js)["findings"])
        ]
    assert by_model and all((tmp_path / "heatmaps" / f"{i}.json").is_file() for i in by_model)


def test_a_second_sweep_skips_what_is_stored(cohort: Path, tmp_path: Path, sweep_rows: Rows) -> None:
    found = units_from_folder(cohort)
    with Store.open(tmp_path / "db.sqlite") as store:
        first = run_sweep(found.units[:5], store=store, description="t", site=found.site, progress=False)
        assert (first.stored, first.done_before) == (5, 0)
        second = run_sweep(found.units, store=store, description="t", site=found.site, progress=False)
        assert (second.stored, second.done_before) == (len(found.units) - 5, 5)
        third = run_sweep(found.units, store=store, description="t", site=found.site, progress=False)
        assert (third.stored, third.done_before, third.sweep_id) == (0, len(found.units), None)
    rows = sweep_rows(tmp_path / "db.sqlite")
    assert len(rows) == len({r[1] for r in rows}) == len(found.units)


def test_a_changed_file_is_a_new_input(cohort: Path, tmp_path: Path) -> None:
    found = units_from_folder(cohort)
    unit = found.units[0]
    touched = sorted(p for p in unit.dicom.rglob("*") if p.is_file())[0]
    stat = touched.stat()
    try:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert units_from_folder(cohort).units[0].fingerprint != unit.fingerprint
    finally:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert units_from_folder(cohort).units[0].fingerprint == unit.fingerprint


def test_concurrent_writers_store_an_input_once(cohort: Path, tmp_path: Path, sweep_rows: Rows) -> None:
    """Another sweep saving results for inputs already stored (say, running at the same time) adds
    nothing: the database's key on (model sha256, input fingerprint) refuses them."""
    found = units_from_folder(cohort)
    db = tmp_path / "db.sqlite"
    with Store.open(db) as store:
        report = run_sweep(found.units[:3], store=store, description="t", site=found.site, progress=False)
        stored = store.swept_results(report.model.sha256, [u.fingerprint for u in found.units])
        assert len(stored) == 3
        sweep_id = store.start_sweep(model=report.model, description="again", studies=3)
        assert store.save_sweep_results(sweep_id, [(s.result, s.inputs) for s in stored]) == 0
        mixed = [(stored[0].result, stored[0].inputs), (stored[0].result, {"study_instance_uid": "1.2.3"})]
        assert store.save_sweep_results(sweep_id, mixed) == 1
    assert len(sweep_rows(db)) == 4


def test_a_plain_folder_is_read_like_check(plain_folder: Path, cohort: Path, tmp_path: Path) -> None:
    found = units_from_folder(plain_folder)
    assert found.site is not None
    assert sorted(u.study_instance_uid for u in found.units) == sorted(
        e.study_instance_uid for e in load_cohort(cohort).entries
    )
    assert all(u.bundle is not None and u.patient_id for u in found.units)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_reads_back(cohort: Path, tmp_path: Path, suffix: str, sweep_rows: Rows) -> None:
    out = tmp_path / f"sweep{suffix}"
    assert _sweep(cohort, tmp_path, "--export", str(out)) == 0
    if suffix == ".csv":
        with out.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        overall = [float(r["overall"]) for r in rows]
        flagged = [r["flagged"] == "True" for r in rows]
    else:
        table = pq.read_table(out).to_pylist()
        rows = table
        overall = [r["overall"] for r in rows]
        flagged = [r["flagged"] for r in rows]
    assert len(rows) == len(load_cohort(cohort))
    assert overall == sorted(overall, reverse=True)
    assert any(flagged) and all(r["model_version"] for r in rows)
    db_uids = {r[0] for r in sweep_rows(tmp_path / "crosscheck.db")}
    assert {r["study_instance_uid"] for r in rows} == db_uids


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, _sweep(empty, tmp_path), "no DICOM studies")
    _one_line_error(capsys, _sweep(tmp_path / "missing", tmp_path), "no such folder")
    _one_line_error(capsys, _sweep(empty, tmp_path, "--export", "x.xlsx"), ".parquet or .csv")
    _one_line_error(capsys, _sweep(empty, tmp_path, "--workers", "0"), "at least 1")
