"""FHIR Bundles / NDJSON -> PatientRecord: mapping, grouping, strictness, file errors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors import (
    FhirBundleInvalid,
    FhirResourceInvalid,
    NoInputFound,
    Strictness,
    read_bundle,
    read_ndjson,
    records_from_bundle,
)
from connectors.domain.record import LOINC
from connectors.fhir import parse_fhir_datetime, validate_resource

P_URN = "urn:uuid:6f1c1b0e-0000-4000-8000-000000000001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def _patient(pid: str | None = None, mrn: str = "MRN-1", **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
                "system": "urn:oid:1.2.3.4",
                "value": mrn,
            }
        ],
        "name": [
            {"use": "usual", "family": "Nick", "given": ["Al"]},
            {"use": "official", "family": "Doe", "given": ["Jane", "Q"]},
        ],
        "gender": "female",
        "birthDate": "1961-04-09",
        **extra,
    }
    if pid:
        r["id"] = pid
    return r


def _obs(oid: str, subject: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://example.org/local", "code": "CREA"},
                {"system": LOINC, "code": "2160-0", "display": "Creatinine"},
            ]
        },
        "subject": {"reference": subject},
        "effectiveDateTime": "2023-05-01T08:30:00+02:00",
        "valueQuantity": {
            "value": 1.9,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
        "referenceRange": [{"low": {"value": 0.6}, "high": {"value": 1.2}}],
        "interpretation": [{"coding": [{"code": "H"}]}],
    }


def _entry(
    resource: dict[str, Any], full_url: str | None = None, method: str | None = None
) -> dict[str, Any]:
    e: dict[str, Any] = {"resource": resource}
    if full_url:
        e["fullUrl"] = full_url
    if method:
        e["request"] = {"method": method, "url": resource["resourceType"]}
    return e


@pytest.fixture
def transaction() -> dict[str, Any]:
    """A transaction Bundle whose references are urn:uuid fullUrls (Patient without id)."""
    sr_urn, is_urn, dev_urn, ep_urn = (
        f"urn:uuid:6f1c1b0e-0000-4000-8000-00000000000{i}" for i in (2, 3, 4, 5)
    )
    obs = _obs("obs-1", P_URN)
    obs.pop("id")
    resources = [
        (_patient(), P_URN),
        (obs, "urn:uuid:6f1c1b0e-0000-4000-8000-000000000009"),
        (
            {
                "resourceType": "Condition",
                "id": "cond-1",
                "subject": {"reference": P_URN},
                "code": {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "254637007"},
                        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C34.90"},
                    ],
                    "text": "NSCLC",
                },
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "verificationStatus": {"coding": [{"code": "confirmed"}]},
                "onsetDateTime": "2022-11",
                "recordedDate": "2022-11-20",
                "bodySite": [{"coding": [{"system": "http://snomed.info/sct", "code": "39607008"}]}],
            },
            None,
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "id": "med-1",
                "status": "active",
                "intent": "order",
                "subject": {"reference": P_URN},
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1790099"}]
                },
                "authoredOn": "2023-01-10",
            },
            None,
        ),
        (
            {
                "resourceType": "Procedure",
                "id": "proc-1",
                "status": "completed",
                "subject": {"reference": P_URN},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "173171007"}]},
                "performedPeriod": {"start": "2023-02-01T10:00:00Z"},
            },
            None,
        ),
        (
            {
                "resourceType": "ServiceRequest",
                "status": "completed",
                "intent": "order",
                "subject": {"reference": P_URN},
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}],
                "code": {"coding": [{"system": LOINC, "code": "24627-2", "display": "CT Chest"}]},
                "identifier": [
                    {
                        "type": {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                            ]
                        },
                        "value": "ACC-77",
                    }
                ],
                "reasonReference": [{"reference": "Condition/cond-1"}],
                "authoredOn": "2023-05-02T09:00:00Z",
            },
            sr_urn,
        ),
        (
            {  # a lab order: not an imaging order
                "resourceType": "ServiceRequest",
                "id": "sr-lab",
                "status": "active",
                "intent": "order",
                "subject": {"reference": P_URN},
                "code": {"coding": [{"system": LOINC, "code": "2160-0", "display": "Creatinine"}]},
            },
            None,
        ),
        (
            {
                "resourceType": "Device",
                "manufacturer": "ACME",
                "modelNumber": "Scan 9000",
                "serialNumber": "SN-42",
                "type": {
                    "coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
                },
            },
            dev_urn,
        ),
        (
            {
                "resourceType": "Endpoint",
                "status": "active",
                "connectionType": {"code": "dicom-wado-rs"},
                "payloadType": [{"text": "DICOM"}],
                "address": "https://pacs.example.org/dicomweb",
            },
            ep_urn,
        ),
        (
            {
                "resourceType": "ImagingStudy",
                "id": "is-1",
                "status": "available",
                "subject": {"reference": P_URN},
                "identifier": [
                    {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
                    {
                        "type": {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                            ]
                        },
                        "value": "ACC-77",
                    },
                ],
                "started": "2023-05-03T11:00:00-05:00",
                "basedOn": [{"reference": sr_urn}],
                "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
                "endpoint": [{"reference": ep_urn}],
                "series": [
                    {
                        "uid": "1.2.826.0.1.3680043.8.498.1.1",
                        "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "SR"},
                        "performer": [{"actor": {"reference": dev_urn}}],
                    }
                ],
            },
            is_urn,
        ),
        (
            {
                "resourceType": "DiagnosticReport",
                "id": "dr-1",
                "status": "final",
                "subject": {"reference": P_URN},
                "category": [{"coding": [{"code": "RAD"}]}],
                "code": {"coding": [{"system": LOINC, "code": "24627-2"}]},
                "effectiveDateTime": "2023-05-03",
                "issued": "2023-05-03T15:00:00Z",
                "conclusion": "Mass in right upper lobe.",
                "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "126713003"}]}],
                "imagingStudy": [{"reference": is_urn}],
                "basedOn": [{"reference": sr_urn}],
            },
            None,
        ),
        (
            {
                "resourceType": "Encounter",
                "id": "enc-1",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": P_URN},
                "period": {"start": "2023-05-03T10:00:00Z", "end": "2023-05-03T12:00:00Z"},
            },
            None,
        ),
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r, url, "POST") for r, url in resources],
    }


def test_transaction_bundle_maps_every_resource(transaction: dict[str, Any]) -> None:
    records = records_from_bundle(transaction)
    assert list(records) == ["6f1c1b0e-0000-4000-8000-000000000001"]
    rec = records["6f1c1b0e-0000-4000-8000-000000000001"]
    p = rec.patient
    assert (p.family, p.given, p.gender, p.birth_date) == ("Doe", ("Jane", "Q"), "female", date(1961, 4, 9))
    assert p.identifiers[0].value == "MRN-1" and p.identifiers[0].type_code == "MR"

    (lab,) = rec.labs
    assert lab.code.system == LOINC and lab.code.code == "2160-0"
    assert lab.value == pytest.approx(1.9) and lab.unit == "mg/dL"
    assert (lab.reference_range.low, lab.reference_range.high) == (0.6, 1.2)  # type: ignore[union-attr]
    assert lab.interpretation == "H" and lab.category == "laboratory"
    assert lab.effective == datetime(2023, 5, 1, 6, 30, tzinfo=UTC)
    assert lab.id == "6f1c1b0e-0000-4000-8000-000000000009"

    (cond,) = rec.conditions
    assert [c.code for c in cond.codes] == ["254637007", "C34.90"]
    assert (cond.clinical_status, cond.verification_status) == ("active", "confirmed")
    assert cond.onset == datetime(2022, 11, 1, tzinfo=UTC)
    assert cond.body_site[0].code == "39607008"

    assert rec.medications[0].start == datetime(2023, 1, 10, tzinfo=UTC)
    assert rec.procedures[0].performed == datetime(2023, 2, 1, 10, tzinfo=UTC)

    (order,) = rec.orders  # the lab ServiceRequest is not an imaging order
    assert order.accession_number == "ACC-77" and order.reason_references == ("Condition/cond-1",)
    assert order.id == "6f1c1b0e-0000-4000-8000-000000000002"

    (img,) = rec.imaging_studies
    assert img.study_instance_uid == STUDY_UID and img.accession_number == "ACC-77"
    assert img.modalities == ("CT", "SR") and img.based_on == (order.id,)
    assert img.device_ids == ("6f1c1b0e-0000-4000-8000-000000000004",)
    assert img.endpoint == "https://pacs.example.org/dicomweb"
    assert img.started == datetime(2023, 5, 3, 16, 0, tzinfo=UTC)

    (dev,) = rec.devices
    assert (dev.manufacturer, dev.model, dev.serial_number) == ("ACME", "Scan 9000", "SN-42")

    (report,) = rec.reports
    assert report.imaging_study_ids == (img.id,) and report.based_on == (order.id,)
    assert report.category == ("RAD",) and report.conclusion_codes[0].code == "126713003"
    assert report.effective == datetime(2023, 5, 3, tzinfo=UTC)

    (enc,) = rec.encounters
    assert enc.class_code == "AMB" and enc.end == datetime(2023, 5, 3, 12, tzinfo=UTC)
    assert rec.problems == ()


def test_every_datetime_is_aware_utc(transaction: dict[str, Any]) -> None:
    rec = next(iter(records_from_bundle(transaction).values()))
    stamps = [
        rec.labs[0].effective,
        rec.conditions[0].recorded,
        rec.reports[0].issued,
        rec.orders[0].authored,
    ]
    assert all(
        s is not None and s.utcoffset() is not None and s.utcoffset().total_seconds() == 0 for s in stamps
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021", datetime(2021, 1, 1, tzinfo=UTC)),
        ("2021-03", datetime(2021, 3, 1, tzinfo=UTC)),
        ("2021-03-04", datetime(2021, 3, 4, tzinfo=UTC)),
        ("2021-03-04T23:30:00-02:00", datetime(2021, 3, 5, 1, 30, tzinfo=UTC)),
        ("2021-03-04T10:00:00.123Z", datetime(2021, 3, 4, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2021-03-04T10:00:00", datetime(2021, 3, 4, 10, tzinfo=UTC)),
        ("not a date", None),
        (None, None),
    ],
)
def test_parse_fhir_datetime(text: str | None, expected: datetime | None) -> None:
    assert parse_fhir_datetime(text) == expected


def test_collection_groups_two_patients_and_drops_strangers() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            _entry(_patient("p1", mrn="A")),
            _entry(_patient("p2", mrn="B")),
            _entry(_obs("o1", "Patient/p1")),
            _entry(_obs("o2", "http://fhir.example.org/fhir/Patient/p2/_history/3")),
            _entry(_obs("o3", "Patient/nobody")),
        ],
    }
    records = records_from_bundle(bundle)
    assert [lab.id for lab in records["p1"].labs] == ["o1"]
    assert [lab.id for lab in records["p2"].labs] == ["o2"]
    with pytest.raises(FhirResourceInvalid, match="Observation/o3"):
        records_from_bundle(bundle, strictness="raise")


@pytest.mark.parametrize("kind", ["searchset", "batch"])
def test_searchset_and_batch_are_accepted(kind: str) -> None:
    entries = [_entry(_patient("p1")), _entry(_obs("o1", "Patient/p1"))]
    if kind == "searchset":
        entries.append(
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "search": {"mode": "outcome"},
            }
        )
    records = records_from_bundle({"resourceType": "Bundle", "type": kind, "entry": entries})
    assert records["p1"].labs[0].id == "o1"


def _bundle_with_bogus_observation() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            _entry(_patient("p1")),
            _entry(_obs("good", "Patient/p1")),
            _entry(_obs("bad", "Patient/p1", status="bogus")),
        ],
    }


def test_invalid_resource_under_raise() -> None:
    with pytest.raises(FhirResourceInvalid) as info:
        records_from_bundle(_bundle_with_bogus_observation(), strictness=Strictness.RAISE)
    assert (info.value.resource_type, info.value.resource_id) == ("Observation", "bad")
    assert "status" in info.value.reason


def test_invalid_resource_under_warn_is_recorded_and_logged_without_phi(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="connectors"):
        rec = records_from_bundle(_bundle_with_bogus_observation())["p1"]
    assert [lab.id for lab in rec.labs] == ["good"]
    assert len(rec.problems) == 1 and rec.problems[0].startswith("Observation/bad: status")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "a warning must be logged under WARN"
    for text in warnings:
        for phi in ("Doe", "Jane", "1961", "MRN-1", "bad", "p1"):
            assert phi not in text


def test_invalid_resource_under_ignore_is_recorded_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="connectors"):
        rec = records_from_bundle(_bundle_with_bogus_observation(), strictness="ignore")["p1"]
    assert len(rec.problems) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_invalid_patient_keeps_its_resources_without_demographics() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [_entry(_patient("p1", gender="banana")), _entry(_obs("o1", "Patient/p1"))],
    }
    rec = records_from_bundle(bundle)["p1"]
    assert rec.patient.family is None and rec.labs[0].id == "o1"
    assert rec.problems[0].startswith("Patient/p1: gender")


def test_validation_reason_carries_no_values() -> None:
    with pytest.raises(FhirResourceInvalid) as info:
        validate_resource(_patient("p1", birthDate="1961-02-31"))
    assert "birthDate" in info.value.reason and "1961" not in str(info.value)


def test_strictness_rejects_unknown_values() -> None:
    assert Strictness.of("WARN") is Strictness.WARN
    with pytest.raises(ValueError, match="ignore, warn, raise"):
        records_from_bundle(_bundle_with_bogus_observation(), strictness="loud")


# -- files -------------------------------------------------------------------------------------------


def test_read_bundle_file_and_folder(tmp_path: Path, transaction: dict[str, Any]) -> None:
    (tmp_path / "a.json").write_text(json.dumps(transaction))
    second = {"resourceType": "Bundle", "type": "collection", "entry": [_entry(_patient("p9", mrn="Z"))]}
    (tmp_path / "b.json").write_text(json.dumps(second))
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(read_bundle(tmp_path / "a.json")) == 1
    assert [r.patient.id for r in read_bundle(tmp_path)] == ["6f1c1b0e-0000-4000-8000-000000000001", "p9"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("this is not json", "not valid JSON"),
        ('{"resourceType": "Patient"}\n{"resourceType": "Patient"}\n', "read_ndjson"),
        ('{"resourceType": "Patient", "id": "p1"}', "expected a FHIR Bundle but found Patient"),
        ('{"resourceType": "Bundle", "type": "history", "entry": []}', "Bundle.type 'history'"),
        ('{"resourceType": "Bundle", "type": "collection", "entry": []}', "holds no Patient"),
    ],
)
def test_bad_bundle_files_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "input.json"
    path.write_text(content)
    with pytest.raises(FhirBundleInvalid, match=match) as info:
        read_bundle(path)
    assert "input.json" in str(info.value)


def test_empty_folder_is_no_input(tmp_path: Path) -> None:
    with pytest.raises(NoInputFound):
        read_bundle(tmp_path)
    with pytest.raises(NoInputFound):
        read_ndjson(tmp_path)


def _write_ndjson(folder: Path, name: str, rows: list[Any]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_ndjson_export_folder_with_many_patients(tmp_path: Path) -> None:
    export = tmp_path / "export"
    _write_ndjson(export, "Patient.ndjson", [_patient("p1", mrn="A"), _patient("p2", mrn="B")])
    _write_ndjson(
        export,
        "Observation.ndjson",
        [_obs("o1", "Patient/p1"), _obs("o2", "Patient/p2"), _obs("o3", "Patient/p2"), ""],
    )
    records = read_ndjson(export)
    assert [r.patient.id for r in records] == ["p1", "p2"]
    assert [len(r.labs) for r in records] == [1, 2]
    assert len(read_ndjson(export / "Patient.ndjson")) == 2


def test_ndjson_bad_line_under_each_strictness(tmp_path: Path) -> None:
    export = tmp_path / "export"
    _write_ndjson(export, "Patient.ndjson", [_patient("p1"), "{broken"])
    _write_ndjson(export, "Observation.ndjson", [_obs("o1", "Patient/p1"), _obs("o2", "Patient/p1", "bogus")])
    rec = read_ndjson(export)[0]
    assert [lab.id for lab in rec.labs] == ["o1"] and len(rec.problems) == 1
    with pytest.raises(FhirBundleInvalid, match=r"Patient\.ndjson:2"):
        read_ndjson(export, strictness="raise")
