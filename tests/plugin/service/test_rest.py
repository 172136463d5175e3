"""The REST decision-support API over real HTTP: uploads, results, authentication, errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from fusion.result import load_schema
from tests.plugin.service.conftest import API_KEY, Serve, study_files

pytestmark = pytest.mark.slow

KEY = {"X-API-Key": API_KEY}


def _upload(case_files: tuple[dict, Path, list[Path]], with_bundle: bool = True) -> list[tuple[str, tuple]]:
    _, bundle, dicom = case_files
    parts: list[tuple[str, tuple]] = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in dicom]
    if with_bundle:
        parts.append(("bundle", ("bundle.json", bundle.read_bytes(), "application/fhir+json")))
    return parts


def _outcome(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "Traceback" not in response.text
    return " ".join(i["diagnostics"] for i in body["issue"])


def test_upload_scores_the_study_and_the_result_reads_back(
    serve: Serve, cohort: Path, tmp_path: Path
) -> None:
    files = study_files(cohort, 0)
    with serve() as url, httpx.Client(base_url=url, headers=KEY, timeout=60) as http:
        response = http.post("/v1/crosscheck", files=_upload(files))
        assert response.status_code == 200, response.text
        (item,) = response.json()["results"]
        jsonschema.validate(item["result"], load_schema())
        assert item["result"]["case"]["study_instance_uid"] == files[0]["study_instance_uid"]
        assert item["result"]["scores"]["consistency"] is not None  # the Bundle's record was linked
        assert item["url"] == f"{url}/v1/results/{item['id']}"
        again = http.get(f"/v1/results/{item['id']}")
        assert again.status_code == 200
        assert again.json()["result"] == item["result"]
        metrics = http.get("/metrics").text
        assert (
            'crosscheck_http_request_seconds_count{method="POST",route="/v1/crosscheck",status="200"}'
            in metrics
        )
        assert 'crosscheck_score_count{score="overall"} 1.0' in metrics
    kept = tmp_path / "data" / "images" / files[0]["study_instance_uid"]
    assert len(list(kept.glob("*.dcm"))) == len(files[2])  # kept for the review page


def test_upload_without_a_bundle_scores_the_image_alone(serve: Serve, cohort: Path) -> None:
    with serve() as url:
        response = httpx.post(
            f"{url}/v1/crosscheck",
            files=_upload(study_files(cohort, 1), with_bundle=False),
            headers=KEY,
            timeout=60,
        )
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    assert item["result"]["scores"]["consistency"] is None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "authentication required"),
        ({"X-API-Key": "wrong"}, "not valid"),
        ({"Authorization": "Basic eA=="}, "Bearer"),
    ],
)
def test_calls_without_a_valid_key_are_refused(serve: Serve, headers: dict[str, str], reason: str) -> None:
    with serve() as url:
        response = httpx.get(f"{url}/v1/results/nope", headers=headers)
    assert reason in _outcome(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("parts", "status", "words"),
    [
        ([("dicom", ("a.dcm", b"not a dicom file at all" * 10, "application/dicom"))], 400, "a.dcm"),
        ([("bundle", ("b.json", b"{}", "application/json"))], 400, "no DICOM files"),
        ([("photo", ("x.png", b"x", "image/png"))], 400, "photo"),
    ],
)
def test_bad_uploads_get_a_specific_outcome(
    serve: Serve, parts: list, status: int, words: str, cohort: Path
) -> None:
    with serve() as url:
        response = httpx.post(f"{url}/v1/crosscheck", files=parts, headers=KEY, timeout=60)
        text = _outcome(response, status)
        assert words.lower() in text.lower()
        assert "upload-" not in text  # our folders stay ours
        assert httpx.get(f"{url}/healthz").status_code == 200  # the process lives on


def test_a_bundle_that_is_not_json_or_not_r4_is_refused(serve: Serve, cohort: Path, tmp_path: Path) -> None:
    _, bundle, dicom = study_files(cohort, 0)
    broken = json.loads(bundle.read_text())
    patient = next(e for e in broken["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"]["gender"] = "sometimes"  # not in the R4 value set's type: still a string ...
    patient["resource"]["birthDate"] = "the fifth of May"  # ... but this is not a FHIR date
    with serve() as url, httpx.Client(base_url=url, headers=KEY, timeout=60) as http:
        files = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in dicom]
        not_json = http.post(
            "/v1/crosscheck", files=[*files, ("bundle", ("b.json", b"{oops", "application/json"))]
        )
        assert "not JSON" in _outcome(not_json, 400)
        invalid = http.post(
            "/v1/crosscheck",
            files=[*files, ("bundle", ("b.json", json.dumps(broken).encode(), "application/json"))],
        )
        assert "Patient" in _outcome(invalid, 422)


def test_references_need_configured_servers(serve: Serve) -> None:
    with serve() as url, httpx.Client(base_url=url, headers=KEY) as http:
        assert "patient_id" in _outcome(http.post("/v1/crosscheck", json={}), 400)
        assert (
            "extra"
            in _outcome(http.post("/v1/crosscheck", json={"patient_id": "p1", "evil": 1}), 400).lower()
        )
        other = http.post(
            "/v1/crosscheck", json={"patient_id": "p1", "fhir_server": "http://attacker.example/fhir"}
        )
        assert "configured" in _outcome(other, 400)
        assert "PACS" in _outcome(http.post("/v1/crosscheck", json={"study_instance_uid": "1.2.3"}), 404)
        assert _outcome(
            http.post("/v1/crosscheck", content=b"x", headers={"Content-Type": "text/plain"}), 415
        )
        assert "no result" in _outcome(http.get("/v1/results/does-not-exist"), 404)


def test_every_call_is_audited_without_patient_data(serve: Serve, cohort: Path, tmp_path: Path) -> None:
    from plugin.store import Store

    files = study_files(cohort, 0)
    with serve() as url:
        ok = httpx.post(f"{url}/v1/crosscheck", files=_upload(files), headers=KEY, timeout=60)
        result_id = ok.json()["results"][0]["id"]
        httpx.get(f"{url}/v1/results/{result_id}", headers=KEY)
        httpx.get(f"{url}/v1/results/missing", headers=KEY)
    with Store.open(f"sqlite:///{tmp_path / 'data' / 'crosscheck.db'}") as store:
        events = store.audit_events(limit=50)
    actions = [(e.action, e.result_id, e.status_code) for e in events]
    assert ("result.create", result_id, 200) in actions
    assert ("result.read", result_id, 200) in actions
    assert ("result.read", None, 404) in actions
    calls = [e for e in events if e.action.startswith("result.")]
    assert len(calls) == 3
    assert all(e.actor.kind == "api-key" and e.actor.id == "tester" for e in calls)
    assert all(e.model_version and e.model_version.startswith("crosscheck-fusion") for e in calls)
    bundle = json.loads(files[1].read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    dump = repr(events)
    assert patient["name"][0]["family"] not in dump and patient["birthDate"] not in dump
