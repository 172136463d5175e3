"""Record snapshots (`plugin.store.Timeline`): built from a PatientRecord around the study's date,
every kind of entry with its FHIR reference, the window and the cap, and the JSON round trip."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from connectors.dicom import read_dicom
from connectors.domain import (
    Case,
    Coding,
    Condition,
    DiagnosticReport,
    Encounter,
    ImagingOrder,
    ImagingStudyRecord,
    LabResult,
    Medication,
    Patient,
    PatientIdentifier,
    PatientIdentity,
    PatientRecord,
    Procedure,
    ReferenceRange,
    Study,
)
from connectors.fhir.extract import records_from_bundle
from connectors.link import link_cases
from plugin.store import EntryKind, Timeline, TimelineEntry
from plugin.store.snapshots import TIMELINE_SCHEMA, case_date
from tests.plugin.service.conftest import study_files

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
STUDY = datetime(2024, 5, 10, 9, 30, tzinfo=UTC)
UID = "1.2.826.0.1.3680043.8.498.77"


def _at(days: float) -> datetime:
    return STUDY + timedelta(days=days)


def _lab(n: int, days: float, value: float, *, code: str = "718-7", vital: bool = False) -> LabResult:
    return LabResult(
        id=f"obs-{n}",
        code=Coding(LOINC, code, "Hemoglobin" if code == "718-7" else "Heart rate"),
        value=value,
        unit="g/dL",
        reference_range=ReferenceRange(low=13.5, high=17.5),
        interpretation="H" if value > 17.5 else "L" if value < 13.5 else "N",
        effective=_at(days),
        category="vital-signs" if vital else "laboratory",
        status="final",
    )


def _record(*labs: LabResult) -> PatientRecord:
    return PatientRecord(
        patient=Patient(
            id="pat-7",
            identifiers=(PatientIdentifier("urn:mrn", "MRN-SECRET-1"),),
            family="Doe",
            given=("Jane",),
            gender="female",
            birth_date=date(1980, 5, 11),
        ),
        labs=labs or (_lab(1, -3, 12.0), _lab(2, -1, 14.2), _lab(3, 0.2, 18.4), _lab(4, -2, 70, vital=True)),
        conditions=(
            Condition(
                id="cond-1",
                codes=(Coding(SNOMED, "233604007", "Pneumonia"),),
                clinical_status="active",
                onset=_at(-4000),  # long before the window: a condition is kept whatever its dates
            ),
            Condition(
                id="cond-2",
                codes=(Coding(SNOMED, "195967001"),),
                clinical_status="active",
                verification_status="refuted",
                onset=_at(-10),
                abatement=_at(-5),
            ),
        ),
        medications=(
            Medication(
                "med-1", "MedicationStatement", (Coding("rxnorm", "2193", "ceftriaxone"),), start=_at(-2)
            ),
            Medication(
                "med-2", "MedicationRequest", (Coding("rxnorm", "1"),), start=_at(-3000), end=_at(-2900)
            ),
        ),
        procedures=(Procedure("proc-1", (Coding(SNOMED, "1", "Bronchoscopy"),), "completed", _at(1)),),
        orders=(
            ImagingOrder(
                id="sr-1",
                codes=(Coding(LOINC, "36572-6", "XR Chest AP"),),
                status="completed",
                authored=_at(-0.5),
                occurrence=_at(0),
                accession_number="ACC-1",
                reason_codes=(Coding(SNOMED, "233604007", "Pneumonia"),),
                reason_references=("Condition/cond-1",),
            ),
        ),
        reports=(
            DiagnosticReport(
                id="dr-1",
                codes=(
                    Coding(LOINC, "18748-4", "Diagnostic imaging study"),
                    Coding(LOINC, "36572-6", "XR Chest AP"),
                ),
                status="final",
                effective=_at(0.3),
                conclusion="Airspace   consolidation\nin the right lower lobe.",
            ),
        ),
        encounters=(Encounter("enc-1", "finished", "IMP", _at(-1), _at(3)),),
        imaging_studies=(ImagingStudyRecord("is-1", UID, "available", _at(0), "ACC-1", ("DX",)),),
    )


def _timeline(**kwargs: object) -> Timeline:
    return Timeline.from_record(_record(), study_instance_uid=UID, study_date=STUDY, **kwargs)  # type: ignore[arg-type]


def test_every_kind_of_record_item_becomes_an_entry_with_its_fhir_reference() -> None:
    t = _timeline()
    kinds = {e.reference: e.kind for e in t.entries}
    assert kinds == {
        "Observation/obs-1": EntryKind.LAB,
        "Observation/obs-2": EntryKind.LAB,
        "Observation/obs-3": EntryKind.LAB,
        "Observation/obs-4": EntryKind.VITAL,
        "Condition/cond-1": EntryKind.CONDITION,
        "Condition/cond-2": EntryKind.CONDITION,
        "MedicationStatement/med-1": EntryKind.MEDICATION,
        "Procedure/proc-1": EntryKind.PROCEDURE,
        "ServiceRequest/sr-1": EntryKind.ORDER,
        "DiagnosticReport/dr-1": EntryKind.REPORT,
        "Encounter/enc-1": EntryKind.ENCOUNTER,
        "ImagingStudy/is-1": EntryKind.IMAGING_STUDY,
    }  # med-2 ended 2,900 days before the study: outside the window
    assert t.omitted == 1
    assert (t.patient_id, t.sex, t.age_years, t.study_date) == ("pat-7", "female", 43, STUDY)
    assert t.has_record and t.study_instance_uid == UID
    dates = [e.date.timestamp() for e in t.entries if e.date is not None]
    assert len(dates) == len(t.entries) and dates == sorted(dates)


def test_entries_carry_values_ranges_and_words() -> None:
    t = _timeline()
    by_ref = {e.reference: e for e in t.entries}
    high = by_ref["Observation/obs-3"]
    assert (high.value, high.unit, high.low, high.high, high.interpretation) == (
        18.4,
        "g/dL",
        13.5,
        17.5,
        "H",
    )
    assert high.code == f"{LOINC}|718-7" and high.label == "Hemoglobin"
    assert high.out_of_range is True and by_ref["Observation/obs-2"].out_of_range is False
    assert by_ref["Observation/obs-1"].out_of_range is True  # below the range
    assert high.range_label == "13.5 to 17.5" and high.value_label == "18.4 g/dL"
    pneumonia = by_ref["Condition/cond-1"]
    assert pneumonia.label == "Pneumonia" and pneumonia.status == "active" and pneumonia.end is None
    refuted = by_ref["Condition/cond-2"]
    assert refuted.label == "195967001" and refuted.status == "refuted" and refuted.end == _at(-5)
    order = by_ref["ServiceRequest/sr-1"]
    assert order.date == _at(-0.5)  # when it was ordered
    assert order.detail is not None and "for Pneumonia" in order.detail and "accession ACC-1" in order.detail
    report = by_ref["DiagnosticReport/dr-1"]
    assert report.label == "XR Chest AP"  # past the generic "Diagnostic imaging study"
    assert report.detail == "Airspace consolidation in the right lower lobe."
    assert by_ref["Encounter/enc-1"].label == "inpatient encounter"
    assert by_ref["ImagingStudy/is-1"].detail == f"StudyInstanceUID {UID}; accession ACC-1"


def test_no_names_identifiers_or_birth_date_are_copied() -> None:
    text = json.dumps(_timeline().to_json())
    for secret in ("MRN-SECRET-1", "Doe", "Jane", "1980-05-11"):
        assert secret not in text


def test_json_round_trip_through_text() -> None:
    t = _timeline()
    again = Timeline.from_json(json.loads(json.dumps(t.to_json())))
    assert again == t
    assert again.to_json()["schema"] == TIMELINE_SCHEMA
    naive = Timeline(UID, None, datetime(2024, 5, 10, 9, 30), (TimelineEntry("lab", "Observation/x", "X"),))
    assert (
        Timeline.from_json(json.loads(json.dumps(naive.to_json()))) == naive
    )  # DICOM's naive dates stay naive


def test_it_pickles_for_a_sweeps_reader_processes() -> None:
    t = _timeline()
    assert pickle.loads(pickle.dumps(t)) == t


def test_json_of_another_schema_or_malformed_is_refused() -> None:
    data = _timeline().to_json()
    with pytest.raises(ValueError, match="imaging-crosscheck/timeline/1"):
        Timeline.from_json({**data, "schema": "imaging-crosscheck/timeline/9"})
    with pytest.raises(ValueError, match="malformed"):
        Timeline.from_json({**data, "entries": [{"kind": "lab", "label": "no reference"}]})
    with pytest.raises(ValueError, match="malformed"):
        Timeline.from_json(
            {**data, "entries": [{"kind": "gossip", "reference": "Observation/1", "label": "x"}]}
        )


def test_the_window_and_the_cap_keep_what_lies_nearest_the_study() -> None:
    labs = tuple(_lab(n, days, 15.0) for n, days in enumerate((-800, -400, -20, -1, 2, 30, 900)))
    record = _record(*labs)
    t = Timeline.from_record(
        record, study_instance_uid=UID, study_date=STUDY, window_days=365, max_entries=1000
    )
    kept = {e.reference for e in t.of_kind("lab")}
    assert kept == {"Observation/obs-2", "Observation/obs-3", "Observation/obs-4", "Observation/obs-5"}
    everything = Timeline.from_record(record, study_instance_uid=UID, study_date=STUDY, window_days=None)
    assert len(everything.of_kind(EntryKind.LAB)) == 7 and everything.omitted == 0
    capped = Timeline.from_record(
        record, study_instance_uid=UID, study_date=STUDY, window_days=None, max_entries=3
    )
    assert len(capped.entries) == 3 and capped.omitted == len(everything.entries) - 3
    nearest = {e.reference for e in capped.entries}
    # the encounter, order, report and ImagingStudy span or touch the study day: nearest of all
    assert nearest <= {"Encounter/enc-1", "ServiceRequest/sr-1", "DiagnosticReport/dr-1", "ImagingStudy/is-1",
                       "Observation/obs-3", "Observation/obs-4"}  # fmt: skip
    with pytest.raises(ValueError, match="max_entries"):
        Timeline.from_record(record, study_instance_uid=UID, study_date=STUDY, max_entries=-1)


def test_without_a_study_date_every_entry_is_kept() -> None:
    t = Timeline.from_record(_record(), study_instance_uid=UID, study_date=None)
    assert t.omitted == 0 and "MedicationRequest/med-2" in t.references
    assert t.age_years is None and t.days_from_study(_at(1)) is None


def _study(when: datetime | None) -> Study:
    return Study(UID, PatientIdentity("pat-7"), (), study_datetime=when)


def test_a_case_without_a_record_gives_an_empty_timeline_that_says_so() -> None:
    t = Timeline.from_case(Case(_study(STUDY)))
    assert not t.has_record and t.entries == () and t.patient_id == "pat-7"
    assert Timeline.from_json(t.to_json()) == t


def test_the_study_date_falls_back_to_the_order() -> None:
    order = _record().orders[0]
    assert case_date(Case(_study(None), order=order)) == order.occurrence
    assert case_date(Case(_study(STUDY), order=order)) == STUDY


def test_from_a_simulated_cohort_case(cohort: Path) -> None:
    entry, bundle, _ = study_files(cohort, 0)
    (record,) = records_from_bundle(json.loads(bundle.read_text())).values()
    studies = read_dicom(cohort / entry["dicom"])
    (case,) = [
        c for c in link_cases(studies, [record]) if c.study_instance_uid == entry["study_instance_uid"]
    ]
    t = Timeline.from_case(case)
    assert t.study_date is not None and t.patient_id == entry["patient_id"]
    labs = t.of_kind("lab")
    assert labs and all(e.reference.startswith("Observation/") and e.code for e in labs)
    assert any(e.low is not None and e.high is not None for e in labs)
    assert any(e.reference == f"ServiceRequest/{case.order.id}" for e in t.entries) if case.order else True
    assert Timeline.from_json(json.loads(json.dumps(t.to_json()))) == t
