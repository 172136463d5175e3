"""``order-sign`` and ``report-sign`` over real HTTP: the study a draft order cites, and the study a
report being signed reads, are the ones checked; logs carry no patient data."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.plugin.cds.cds_client import SimulatedCdsClient
from tests.plugin.service.conftest import API_KEY, Serve, study_files
from tests.plugin.service.prefetch import prefetch_from_bundle

pytestmark = pytest.mark.slow

SETTINGS = {"patient_view_max_age_days": 36500.0}


def _imaging_study(bundle: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        and any(i["value"] == f"urn:oid:{uid}" for i in e["resource"]["identifier"])
    )


def _score(url: str, cohort: Path, index: int) -> dict[str, Any]:
    _, bundle, dicom = study_files(cohort, index)
    files = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in dicom]
    files.append(("bundle", ("b.json", bundle.read_bytes(), "application/json")))
    response = httpx.post(f"{url}/v1/crosscheck", files=files, headers={"X-API-Key": API_KEY}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def _call(url: str, client: SimulatedCdsClient, service: str, body: dict[str, Any]) -> httpx.Response:
    endpoint = f"{url}/cds-services/{service}"
    return httpx.post(
        endpoint, json=body, headers={"Authorization": client.authorization(endpoint)}, timeout=60
    )


def test_order_sign_checks_the_study_the_draft_order_cites(
    serve: Serve, cohort: Path, cds_client: SimulatedCdsClient
) -> None:
    case, bundle_path, _ = study_files(cohort, 0)  # pat-000000's synthetic study: flagged
    bundle = json.loads(bundle_path.read_text())
    study = _imaging_study(bundle, case["study_instance_uid"])
    order = {
        "resourceType": "ServiceRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "387713003", "display": "Surgical procedure"}
                ]
            }
        ],
        "code": {"text": "Lobectomy"},
        "subject": {"reference": f"Patient/{case['patient_id']}"},
        "supportingInfo": [{"reference": f"ImagingStudy/{study['id']}"}],
    }
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": case["patient_id"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
        },
        "prefetch": prefetch_from_bundle(bundle),
    }
    with serve(**SETTINGS) as url:
        scored = _score(url, cohort, 0)
        assert scored["result"]["flagged"]
        response = _call(url, cds_client, "imaging-crosscheck-order-sign", body)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert any(case["study_instance_uid"] in link["url"] for link in card["links"])
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "Task"


def test_report_sign_checks_the_study_the_report_reads(
    serve: Serve, cohort: Path, cds_client: SimulatedCdsClient, caplog: pytest.LogCaptureFixture
) -> None:
    case, bundle_path, _ = study_files(cohort, 0)
    bundle = json.loads(bundle_path.read_text())
    study = _imaging_study(bundle, case["study_instance_uid"])
    report = {
        "resourceType": "DiagnosticReport",
        "id": "draft-report-1",
        "status": "preliminary",
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
            ]
        },
        "subject": {"reference": f"Patient/{case['patient_id']}"},
        "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}],
        "conclusion": "No acute findings.",
    }
    body = {
        "hook": "report-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/radiologist-1",
            "patientId": case["patient_id"],
            "draftReports": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": report}]},
        },
        "prefetch": prefetch_from_bundle(bundle),
    }
    caplog.set_level(logging.DEBUG)
    with serve(**SETTINGS) as url:
        _score(url, cohort, 0)
        response = _call(url, cds_client, "imaging-crosscheck-report-sign", body)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert any(case["study_instance_uid"] in link["url"] for link in card["links"])
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert case["study_instance_uid"] in logged  # ids are logged at debug level ...
    for private in (
        patient["name"][0]["family"],
        patient["birthDate"],
        *[i["value"] for i in patient["identifier"]],
    ):
        assert private not in logged  # ... never names, birth dates or identifiers


def test_without_an_allow_list_the_service_does_not_start(tmp_path: Path) -> None:
    from plugin.cli import main

    assert main(["serve", "--data-dir", str(tmp_path), "--port", "1"]) == 2
    clients = tmp_path / "clients.json"
    clients.write_text('{"https://ehr.example.org": {"jwks_uri": "https://x"}}')
    assert main(["serve", "--data-dir", str(tmp_path), "--cds-clients", str(clients)]) == 2
