"""The simulated cohort written to disk: manifest, bundles, DICOM, determinism."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from fusion.cohort.scenario import ClinicalCondition, Manipulation
from fusion.cohort.simulate import MANIFEST_SCHEMA, simulate
from fusion.cohort.site import default_site
from fusion.cohort.terminology import CONDITION_CODES

SEED = 5
PATIENTS = 8


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    simulate(out, PATIENTS, SEED, manipulated_rate=0.5, workers=1)
    return out


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return data


def _bundle(out: Path, case: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / case["bundle"]).read_text(encoding="utf-8"))
    return data


def _first_header(out: Path, case: dict[str, Any]) -> pydicom.Dataset:
    files = sorted(p for p in (out / case["dicom"]).rglob("*") if p.is_file())
    assert files, case["dicom"]
    return pydicom.dcmread(files[0], stop_before_pixels=True)


def _conditions(bundle: dict[str, Any]) -> set[str]:
    return {
        c["code"]["coding"][0]["code"]
        for e in bundle["entry"]
        if (c := e["resource"])["resourceType"] == "Condition"
    }


def test_manifest_lists_every_study(cohort: Path) -> None:
    manifest = _manifest(cohort)
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert manifest["seed"] == SEED and manifest["patients"] == PATIENTS
    cases = manifest["cases"]
    assert {c["patient_id"] for c in cases} == {f"pat-{i:06d}" for i in range(PATIENTS)}
    assert len({c["study_instance_uid"] for c in cases}) == len(cases) >= PATIENTS
    assert sorted(p.name for p in (cohort / "bundles").iterdir()) == sorted(
        f"pat-{i:06d}.json" for i in range(PATIENTS)
    )
    kinds = set(manifest["kinds"])
    assert Manipulation.SYNTHETIC.value in kinds | set(manifest["skipped_kinds"])
    for c in cases:
        assert c["kind"] in {"chest-dx", "chest-ct", "brain-mr"}
        assert (c["label"] == "clean") == (c["manipulation"] is None)
        if c["manipulation"] is not None:
            assert c["manipulation"] in kinds
    manipulated = sum(c["label"] == "manipulated" for c in cases)
    assert abs(manipulated - 0.5 * len(cases)) <= 1
    # kinds spread evenly: no kind used twice before every kind was used once
    counts = Counter(c["manipulation"] for c in cases if c["manipulation"])
    assert max(counts.values()) <= -(-manipulated // len(kinds)) + 1
    site = json.loads((cohort / "site.json").read_text(encoding="utf-8"))
    assert site["uid_roots"] == [default_site(SEED).uid_root] and site["devices"]


def test_bundles_validate_and_dicom_matches_the_manifest(cohort: Path) -> None:
    for case in _manifest(cohort)["cases"]:
        bundle = _bundle(cohort, case)
        Bundle.model_validate(bundle)
        ds = _first_header(cohort, case)
        assert ds.StudyInstanceUID == case["study_instance_uid"]
        assert Path(case["dicom"]).name == case["study_instance_uid"]
        if case["manipulation"] is None:
            assert ds.AccessionNumber == case["accession_number"]
            patient = next(
                e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
            )
            assert ds.PatientID == patient["identifier"][0]["value"]


def test_wrong_patient_header_names_the_target(cohort: Path) -> None:
    cases = [c for c in _manifest(cohort)["cases"] if c["manipulation"] == Manipulation.WRONG_PATIENT.value]
    assert cases
    for case in cases:
        assert case["detail"]["donor_patient_id"] != case["patient_id"]
        bundle = _bundle(cohort, case)
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        assert _first_header(cohort, case).PatientID == patient["identifier"][0]["value"]


def test_same_seed_same_cohort_whatever_the_workers(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate(again, PATIENTS, SEED, manipulated_rate=0.5, workers=2)
    assert _manifest(again) == _manifest(cohort)
    for name in sorted(p.name for p in (cohort / "bundles").iterdir()):
        assert (again / "bundles" / name).read_bytes() == (cohort / "bundles" / name).read_bytes()
    files_a = sorted(p.relative_to(cohort).as_posix() for p in (cohort / "dicom").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(again).as_posix() for p in (again / "dicom").rglob("*") if p.is_file())
    assert files_a == files_b

    other = tmp_path / "other"
    simulate(other, 2, SEED + 1, manipulated_rate=0.5, workers=1)
    first = [c["study_instance_uid"] for c in _manifest(cohort)["cases"][:2]]
    assert [c["study_instance_uid"] for c in _manifest(other)["cases"][:2]] != first


def test_injected_and_removed_findings_contradict_the_record(tmp_path: Path) -> None:
    out = tmp_path / "edits"
    kinds = [Manipulation.FINDING_INJECTED, Manipulation.FINDING_REMOVED]
    simulate(out, 3, 12, manipulated_rate=1.0, kinds=kinds, workers=1)
    cases = _manifest(out)["cases"]
    injected = [c for c in cases if c["manipulation"] == Manipulation.FINDING_INJECTED.value]
    removed = [c for c in cases if c["manipulation"] == Manipulation.FINDING_REMOVED.value]
    assert injected and removed
    assert {c["manipulation"] for c in cases} <= {k.value for k in kinds}
    for case in injected:
        condition = ClinicalCondition(case["detail"]["injected"]["condition"])
        assert CONDITION_CODES[condition][0].code not in _conditions(_bundle(out, case))
    for case in removed:
        condition = ClinicalCondition(case["detail"]["removed"]["condition"])
        assert CONDITION_CODES[condition][0].code in _conditions(_bundle(out, case))


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not empty"):
        simulate(tmp_path, 2, SEED, workers=1)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "bundles").exists()


def test_overwrites_a_previous_cohort(tmp_path: Path) -> None:
    out = tmp_path / "c"
    simulate(out, 3, 1, manipulated_rate=0.0, workers=1)
    simulate(out, 2, 1, manipulated_rate=0.0, workers=1)
    manifest = _manifest(out)
    assert manifest["patients"] == 2
    assert sorted(p.name for p in (out / "bundles").iterdir()) == ["pat-000000.json", "pat-000001.json"]
    assert all(c["label"] == "clean" for c in manifest["cases"])
