"""The ``crosscheck`` CLI: results on stdout, one readable line and exit 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from fusion.result import load_schema
from plugin.cli import main

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin", *args], capture_output=True, text=True, timeout=300, check=False
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("crosscheck check: error: ")
    for needle in needles:
        assert needle in lines[0]


def _manifest(cohort: Path) -> list[dict[str, object]]:
    cases: list[dict[str, object]] = json.loads((cohort / "manifest.json").read_text())["cases"]
    return cases


def test_check_json_lines_validate_against_the_schema(cohort: Path) -> None:
    case = _manifest(cohort)[0]
    proc = _run(
        "check",
        "--bundle",
        str(cohort / str(case["bundle"])),
        "--dicom",
        str(cohort / str(case["dicom"])),
        "--site",
        str(cohort / "site.json"),
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    jsonschema.validate(doc, load_schema())
    assert doc["case"]["study_instance_uid"] == case["study_instance_uid"]
    assert doc["case"]["patient_id"] == case["patient_id"]


def test_check_without_bundle_scores_the_image_only(cohort: Path) -> None:
    case = _manifest(cohort)[0]
    proc = _run("check", "--dicom", str(cohort / str(case["dicom"])), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["scores"]["consistency"] is None
    assert doc["scores"]["synthetic"] is not None


def test_header_identity_case_is_flagged_with_evidence(cohort: Path, tmp_path: Path) -> None:
    # whatever the manifest drew, tamper one clean study's header ourselves and check it is caught
    import pydicom

    case = next(c for c in _manifest(cohort) if c["label"] == "clean")
    study_dir = cohort / str(case["dicom"])
    target = tmp_path / "study"
    target.mkdir()
    for f in sorted(study_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PatientBirthDate = "19000101"
        ds.save_as(target / f.name)
    proc = _run(
        "check", "--bundle", str(cohort / str(case["bundle"])), "--dicom", str(target), "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["flagged"] is True
    codes = {f["code"] for f in doc["findings"]}
    assert "identity.birth-date-mismatch" in codes


def test_truncated_dicom_file(cohort: Path, tmp_path: Path) -> None:
    case = _manifest(cohort)[0]
    first = sorted((cohort / str(case["dicom"])).glob("*.dcm"))[0]
    broken = tmp_path / "truncated.dcm"
    broken.write_bytes(first.read_bytes()[:3000])
    _assert_one_line_error(_run("check", "--dicom", str(broken)), "truncated.dcm", "truncated")


def test_non_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file, not DICOM\n")
    _assert_one_line_error(_run("check", "--dicom", str(path)), "notes.dcm", "not a DICOM file")


def test_empty_folder(tmp_path: Path) -> None:
    _assert_one_line_error(_run("check", "--dicom", str(tmp_path)), "no readable DICOM")


def test_bundle_with_an_invalid_resource(cohort: Path, tmp_path: Path) -> None:
    case = _manifest(cohort)[0]
    bundle = json.loads((cohort / str(case["bundle"])).read_text())
    entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    entry["resource"]["status"] = "bogus"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle))
    dicom = str(cohort / str(case["dicom"]))
    _assert_one_line_error(
        _run("check", "--bundle", str(bad), "--dicom", dicom),
        f"Observation/{entry['resource']['id']}",
        "status",
    )
    # with --strictness warn the resource is skipped, and the result says so
    proc = _run("check", "--bundle", str(bad), "--dicom", dicom, "--strictness", "warn", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    codes = {f["code"] for f in json.loads(proc.stdout)["findings"]}
    assert "record.resources-skipped" in codes


def test_bundle_that_is_not_json(cohort: Path, tmp_path: Path) -> None:
    case = _manifest(cohort)[0]
    bad = tmp_path / "garbage.json"
    bad.write_text("{ not json")
    _assert_one_line_error(
        _run("check", "--bundle", str(bad), "--dicom", str(cohort / str(case["dicom"]))), "garbage.json"
    )


def test_missing_path() -> None:
    _assert_one_line_error(_run("check", "--dicom", "/nonexistent/folder"), "no such file")


def test_simulate_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", str(tmp_path / "c"), "--patients", "0"]) == 2
    assert "--patients must be at least 1" in capsys.readouterr().err


def test_missing_model_bundle_is_a_clear_error(cohort: Path, tmp_path: Path) -> None:
    case = _manifest(cohort)[0]
    proc = _run("check", "--dicom", str(cohort / str(case["dicom"])), "--model", str(tmp_path / "nomodel"))
    _assert_one_line_error(proc, "crosscheck train")


def test_check_explain_writes_a_heatmap_and_a_reason_per_study(cohort, tmp_path):
    case = json.loads((cohort / "manifest.json").read_text())["cases"][0]
    out = tmp_path / "why"
    proc = _run(
        "check",
        "--bundle",
        str(cohort / case["bundle"]),
        "--dicom",
        str(cohort / case["dicom"]),
        "--explain",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    uid = case["study_instance_uid"]
    assert (out / f"{uid}.png").is_file() and (out / f"{uid}.png").stat().st_size > 1000
    reason = (out / f"{uid}.txt").read_text()
    assert reason.startswith(("Flagged for review", "Not flagged"))


def test_sigterm_stops_simulate_and_its_workers(tmp_path):
    import signal
    import time

    out = tmp_path / "cohort"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plugin",
            "simulate",
            "--out",
            str(out),
            "--patients",
            "60",
            "--seed",
            "5",
            "--workers",
            "2",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any((out / "bundles").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().endswith("crosscheck simulate: interrupted")
    files = sum(1 for _ in out.rglob("*"))
    time.sleep(3)
    assert sum(1 for _ in out.rglob("*")) == files  # no orphaned worker keeps writing
    assert not (out / "manifest.json").exists()
