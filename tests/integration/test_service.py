"""The service against the real FHIR server and PACS: CDS calls that query ``fhirServer`` and
fetch images on demand, the deadline and its "running" card, ingest from Orthanc's change
feed and by STOW-RS, REST references, and write-back (DetectedIssue, DICOM SR)."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.auth import Credentials
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.cds.models import CdsResponse
from plugin.servers import ServerSettings
from plugin.service.app import create_app
from plugin.service.auth import hash_api_key
from plugin.service.background import serve_in_background
from plugin.settings import Settings
from plugin.store import Store
from tests.plugin.cds.cds_client import SimulatedCdsClient

pytestmark = pytest.mark.integration

API_KEY = "integration-key-123456"
SERVICE = "imaging-crosscheck-patient-view"

#: The specification's own patient-view request ("Calling a CDS Service", example), verbatim.
SPEC_PATIENT_VIEW: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(load_bundle(default_bundle_path(), device="cpu"))


@pytest.fixture(scope="module")
def cds_client() -> SimulatedCdsClient:
    return SimulatedCdsClient("https://ehr.integration.example")


@pytest.fixture
def service(
    tmp_path: Path, scorer: Scorer, cds_client: SimulatedCdsClient, orthanc: Any, sekmet: Any, loaded: Path
) -> Callable[..., AbstractContextManager[str]]:
    keys, clients = tmp_path / "keys.json", tmp_path / "clients.json"
    keys.write_text(json.dumps({"integration": hash_api_key(API_KEY)}))
    clients.write_text(json.dumps(cds_client.allow_list()))
    servers = ServerSettings(
        fhir_url=sekmet.url,
        fhir_credentials=Credentials(token=sekmet.token),
        dicomweb_url=orthanc.dicomweb,
        dicomweb_credentials=Credentials(username=orthanc.user[0], password=orthanc.user[1]),
    )

    @contextmanager
    def run(**fields: Any) -> Iterator[str]:
        settings = Settings(
            data_dir=tmp_path / "data",
            api_keys=keys,
            cds_clients=clients,
            patient_view_max_age_days=36500.0,
            **fields,
        )
        with serve_in_background(create_app(settings, servers, scorer=scorer)) as url:
            yield url

    return run


def _store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'data' / 'crosscheck.db'}")


def _wait_for_result(tmp_path: Path, study_instance_uid: str, sha256: str, seconds: float = 120) -> Any:
    """The study's stored result once the background scoring has stored it (None after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with _store(tmp_path) as store:
            stored = store.latest_result(study_instance_uid, sha256)
        if stored is not None:
            return stored
        time.sleep(0.5)
    return None


def _spec_call(patient_id: str, fhir_url: str, token: str) -> dict[str, Any]:
    """The specification's example with what must point at this test's servers replaced."""
    body = copy.deepcopy(SPEC_PATIENT_VIEW)
    body["fhirServer"] = fhir_url
    body["fhirAuthorization"]["access_token"] = token
    body["context"]["patientId"] = patient_id
    body["prefetch"]["patientToGreet"]["id"] = patient_id
    return body


def test_the_specifications_patient_view_example_gets_an_answer_on_demand(
    service: Callable[..., AbstractContextManager[str]],
    cds_client: SimulatedCdsClient,
    sekmet: Any,
    tmp_path: Path,
) -> None:
    with service(cds_deadline_ms=60_000) as url:
        endpoint = f"{url}/cds-services/{SERVICE}"
        body = _spec_call("pat-000000", sekmet.url, sekmet.token)
        first = httpx.post(
            endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}, timeout=120
        )
        assert first.status_code == 200, first.text
        CdsResponse.model_validate(first.json())
        body["hookInstance"] = str(uuid.uuid4())
        second = httpx.post(
            endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}, timeout=60
        )
        assert second.status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    assert [c["summary"] for c in first.json()["cards"]] == [c["summary"] for c in second.json()["cards"]]
    assert 'crosscheck_result_lookups_total{outcome="miss"}' in metrics
    assert 'crosscheck_result_lookups_total{outcome="hit"}' in metrics
    with _store(tmp_path) as store:
        sources = {e.detail.get("cached") for e in store.audit_events(action="cds.call")}
    assert sources == {True, False}  # scored on demand, then answered from the store


def test_past_the_deadline_the_card_says_the_check_is_running(
    service: Callable[..., AbstractContextManager[str]], cds_client: SimulatedCdsClient, sekmet: Any
) -> None:
    with service(cds_deadline_ms=0) as url:
        endpoint = f"{url}/cds-services/{SERVICE}"
        body = _spec_call("pat-000003", sekmet.url, sekmet.token)
        first = httpx.post(
            endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}, timeout=60
        )
        assert first.status_code == 200, first.text
        (running,) = first.json()["cards"]
        assert running["indicator"] == "info" and "running" in running["summary"].lower()
        for _ in range(120):  # the scoring goes on; the next call shows its result
            body["hookInstance"] = str(uuid.uuid4())
            again = httpx.post(
                endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}
            )
            if not any("running" in c["summary"].lower() for c in again.json()["cards"]):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the check never finished")


def test_an_unreachable_fhir_server_is_412_and_an_unknown_patient_too(
    service: Callable[..., AbstractContextManager[str]], cds_client: SimulatedCdsClient, sekmet: Any
) -> None:
    with service() as url:
        endpoint = f"{url}/cds-services/{SERVICE}"
        for body in (
            SPEC_PATIENT_VIEW,  # hooks.smarthealthit.org is not reachable from here
            _spec_call("no-such-patient", sekmet.url, sekmet.token),
            _spec_call("pat-000000", sekmet.url, "a-wrong-token"),
        ):
            body = {**body, "hookInstance": str(uuid.uuid4())}
            response = httpx.post(
                endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}, timeout=60
            )
            assert response.status_code == 412, response.text
            assert response.json()["resourceType"] == "OperationOutcome"
            assert "a-wrong-token" not in response.text


def test_rest_references_resolve_on_the_configured_servers(
    service: Callable[..., AbstractContextManager[str]], loaded: Path
) -> None:
    manifest = json.loads((loaded / "manifest.json").read_text())
    case = manifest["cases"][0]
    with service() as url, httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as http:
        response = http.post(
            "/v1/crosscheck",
            json={"patient_id": case["patient_id"], "study_instance_uid": case["study_instance_uid"]},
        )
        assert response.status_code == 200, response.text
        (item,) = response.json()["results"]
        assert item["result"]["case"]["study_instance_uid"] == case["study_instance_uid"]
        assert item["result"]["scores"]["consistency"] is not None
        unknown = http.post("/v1/crosscheck", json={"study_instance_uid": "1.2.3.4.5.6"})
        assert unknown.status_code == 404, unknown.text


def test_studies_arriving_at_orthanc_are_scored_from_its_change_feed(
    service: Callable[..., AbstractContextManager[str]],
    orthanc: Any,
    loaded: Path,
    tmp_path: Path,
    scorer: Scorer,
) -> None:
    manifest = json.loads((loaded / "manifest.json").read_text())
    case = manifest["cases"][2]
    auth = orthanc.user
    with service(orthanc_url=orthanc.url, ingest_poll_s=0.2):
        time.sleep(1.0)  # the feed starts at its end: only what arrives now is ingested
        # send the study's files to Orthanc again: a new StableStudy after Orthanc's stable delay
        query = {"Level": "Study", "Query": {"StudyInstanceUID": case["study_instance_uid"]}}
        (orthanc_id,) = httpx.post(f"{orthanc.url}/tools/find", json=query, auth=auth).json()
        assert httpx.delete(f"{orthanc.url}/studies/{orthanc_id}", auth=auth).status_code == 200
        for path in sorted((loaded / case["dicom"]).rglob("*.dcm")):
            assert (
                httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), auth=auth).status_code
                == 200
            )
        stored = _wait_for_result(tmp_path, case["study_instance_uid"], scorer.model_info.sha256)
    assert stored is not None, "the change feed did not bring the study in"
    assert stored.source == "ingest"


def test_a_stow_to_the_plugin_is_scored_and_written_back(
    service: Callable[..., AbstractContextManager[str]],
    loaded: Path,
    tmp_path: Path,
    scorer: Scorer,
    sekmet: Any,
    orthanc: Any,
) -> None:
    manifest = json.loads((loaded / "manifest.json").read_text())
    case = manifest["cases"][0]  # pat-000000's synthetic study: flagged by the shipped model
    boundary = "crosscheck-test-boundary"
    body = b""
    for path in sorted((loaded / case["dicom"]).rglob("*.dcm")):
        body += (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    with service(writeback_fhir=True, writeback_sr=True, writeback_fhir_mode="update-as-create") as url:
        response = httpx.post(
            f"{url}/ingest/studies",
            content=body,
            headers={
                "X-API-Key": API_KEY,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == len(list((loaded / case["dicom"]).rglob("*.dcm")))
        deadline = time.monotonic() + 180
        writes: set[str] = set()
        while time.monotonic() < deadline and writes != {"fhir", "pacs"}:
            with _store(tmp_path) as store:
                writes = {str(e.detail.get("to")) for e in store.audit_events(action="writeback")}
            time.sleep(0.5)
    assert writes == {"fhir", "pacs"}, writes
    bundle = json.loads((loaded / case["bundle"]).read_text())
    (imaging_study,) = [
        e["resource"]["id"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        and any(i["value"] == f"urn:oid:{case['study_instance_uid']}" for i in e["resource"]["identifier"])
    ]
    fhir_auth = {"Authorization": f"Bearer {sekmet.token}"}
    issues = httpx.get(f"{sekmet.url}/DetectedIssue", headers=fhir_auth, timeout=30).json().get("entry", [])
    ours = [
        e["resource"]
        for e in issues
        if any(
            r.get("reference") == f"ImagingStudy/{imaging_study}" for r in e["resource"].get("implicated", [])
        )
    ]
    srs = httpx.get(
        f"{orthanc.dicomweb}/studies/{case['study_instance_uid']}/series",
        params={"Modality": "SR"},
        auth=orthanc.user,
        timeout=30,
    )
    try:
        assert len(ours) == 1, "one DetectedIssue implicating the study"
        assert ours[0]["patient"]["reference"] == f"Patient/{case['patient_id']}"
        assert srs.status_code == 200 and srs.json(), "no SR series stored with the study"
    finally:  # leave the shared servers as the cohort was loaded
        for resource in ours:
            httpx.delete(f"{sekmet.url}/DetectedIssue/{resource['id']}", headers=fhir_auth, timeout=30)
        if srs.status_code == 200:
            for series in srs.json():
                uid = series["0020000E"]["Value"][0]
                query = {"Level": "Series", "Query": {"SeriesInstanceUID": uid}}
                for oid in httpx.post(f"{orthanc.url}/tools/find", json=query, auth=orthanc.user).json():
                    httpx.delete(f"{orthanc.url}/series/{oid}", auth=orthanc.user)


def test_a_fhir_subscription_notification_gets_its_study_scored(
    service: Callable[..., AbstractContextManager[str]], loaded: Path, tmp_path: Path, scorer: Scorer
) -> None:
    manifest = json.loads((loaded / "manifest.json").read_text())
    case = manifest["cases"][4]
    bundle = json.loads((loaded / case["bundle"]).read_text())
    study = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        and any(i["value"] == f"urn:oid:{case['study_instance_uid']}" for i in e["resource"]["identifier"])
    )
    notification = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"fullUrl": f"ImagingStudy/{study['id']}", "resource": study}],
    }
    with service() as url:
        response = httpx.post(
            f"{url}/ingest/fhir-subscription", json=notification, headers={"X-API-Key": API_KEY}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["queued"] == [case["study_instance_uid"]]
        stored = _wait_for_result(tmp_path, case["study_instance_uid"], scorer.model_info.sha256)
    assert stored is not None and stored.source == "ingest"
    assert stored.result.scores.consistency is not None  # the record came from the FHIR server
    with _store(tmp_path) as store:  # and its snapshot was kept with the result
        snapshot = store.timeline(stored.id)
    assert snapshot is not None and snapshot.has_record
    assert (snapshot.patient_id, snapshot.study_instance_uid) == (
        case["patient_id"],
        case["study_instance_uid"],
    )
    assert f"ImagingStudy/{study['id']}" in snapshot.references and snapshot.of_kind("lab")
