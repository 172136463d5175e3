"""Linking studies to records; and the package surface of `connectors`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import connectors
from connectors import link_cases
from connectors.domain import (
    DiagnosticReport,
    ImagingOrder,
    ImagingStudyRecord,
    LinkMethod,
    Patient,
    PatientIdentifier,
    PatientIdentity,
    PatientRecord,
    Series,
    Study,
)


def _study(uid: str, accession: str | None = None, patient_id: str | None = "MRN-0") -> Study:
    return Study(
        study_instance_uid=uid,
        patient=PatientIdentity(patient_id=patient_id),
        series=(Series(series_instance_uid=f"{uid}.1", modality="CT", instances=()),),
        accession_number=accession,
    )


def _record(
    pid: str, mrn: str, *, study_uid: str | None = None, accession: str | None = None
) -> PatientRecord:
    order = ImagingOrder(id=f"sr-{pid}", codes=(), accession_number=accession)
    other_order = ImagingOrder(id=f"sr-{pid}-other", codes=(), accession_number="UNRELATED")
    imaging = ImagingStudyRecord(id=f"is-{pid}", study_instance_uid=study_uid, based_on=(order.id,))
    return PatientRecord(
        patient=Patient(id=pid, identifiers=(PatientIdentifier(system="urn:mrn", value=mrn),)),
        orders=(other_order, order),
        imaging_studies=(imaging,) if study_uid else (),
        reports=(
            DiagnosticReport(id=f"dr-{pid}-other", codes=(), based_on=(other_order.id,)),
            DiagnosticReport(id=f"dr-{pid}", codes=(), imaging_study_ids=(imaging.id,) if study_uid else ()),
            DiagnosticReport(id=f"dr-{pid}-by-order", codes=(), based_on=(order.id,)),
        ),
    )


def test_link_by_study_instance_uid_beats_accession_and_patient_id() -> None:
    a = _record("a", "MRN-A", study_uid="1.2.3", accession="ACC-1")
    b = _record("b", "MRN-0", accession="ACC-9")  # matches PatientID and accession
    (case,) = link_cases([_study("1.2.3", accession="ACC-9")], [b, a])
    assert case.link is LinkMethod.STUDY_INSTANCE_UID
    assert case.record is a and case.imaging_study is a.imaging_studies[0]
    assert case.order is not None and case.order.id == "sr-a"  # the order the ImagingStudy is basedOn
    assert case.report is not None and case.report.id == "dr-a"  # references the ImagingStudy


def test_link_by_accession_number_finds_order_and_report() -> None:
    rec = _record("a", "MRN-A", accession="ACC-1")
    (case,) = link_cases([_study("9.9", accession="ACC-1")], {"a": rec})
    assert case.link is LinkMethod.ACCESSION_NUMBER
    assert case.order is not None and case.order.id == "sr-a"
    assert case.report is not None and case.report.id == "dr-a-by-order"  # basedOn the order
    assert case.imaging_study is None


def test_link_by_patient_identifier_then_none() -> None:
    rec = _record("a", "MRN-A")
    by_id, other_id, nothing = link_cases(
        [
            _study("1.1", patient_id="MRN-A"),
            Study("1.2", PatientIdentity(patient_id="X", other_ids=("MRN-A",)), series=()),
            _study("1.3", accession="ACC-404", patient_id="MRN-Z"),
        ],
        [rec],
    )
    assert by_id.link is LinkMethod.PATIENT_IDENTIFIER and by_id.record is rec and by_id.order is None
    assert other_id.link is LinkMethod.PATIENT_IDENTIFIER
    assert nothing.link is LinkMethod.NONE and nothing.record is None
    assert nothing.patient_id == "MRN-Z" and by_id.patient_id == "a"


def test_ambiguous_uid_uses_first_record_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    a = _record("a", "MRN-A", study_uid="1.2.3")
    b = _record("b", "MRN-B", study_uid="1.2.3")
    (case,) = link_cases([_study("1.2.3")], [b, a])
    assert case.record is b
    assert any("2 patients" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# -- package surface --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["connectors", "connectors.fhir", "connectors.dicom", "connectors.domain", "connectors.errors"]
)
def test_all_is_sorted_and_complete(module: str) -> None:
    mod = importlib.import_module(module)
    exported = mod.__all__
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith(module) and callable(v)
    }
    assert public <= set(exported), f"{module} exports are missing {sorted(public - set(exported))}"


def test_import_connectors_loads_neither_torch_nor_fastapi() -> None:
    code = "import connectors, sys; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert connectors.Strictness.of("raise") is connectors.Strictness.RAISE
