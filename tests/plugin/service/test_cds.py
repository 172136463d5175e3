"""CDS Hooks over real HTTP: discovery, a signed patient-view call answered from the store,
cards as the specification defines them, feedback, and every way a JWT can be refused."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin.cds.models import CdsResponse
from plugin.store import CaseQueue, Store
from tests.plugin.cds.cds_client import OMIT, SimulatedCdsClient, new_key
from tests.plugin.service.conftest import API_KEY, Serve, study_files
from tests.plugin.service.prefetch import prefetch_from_bundle

pytestmark = pytest.mark.slow

SERVICE = "imaging-crosscheck-patient-view"
SETTINGS = {"patient_view_max_age_days": 36500.0}  # the simulated studies are years old


def _call_body(bundle: dict[str, Any], **fields: Any) -> dict[str, Any]:
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient["id"]},
        "prefetch": prefetch_from_bundle(bundle),
    }
    body.update(fields)
    return body


def _score_patient_studies(url: str, cohort: Path, indices: list[int]) -> dict[str, dict[str, Any]]:
    """Score studies through the REST API first (as ingest would): the hook then answers from the store."""
    out = {}
    for i in indices:
        case, bundle, dicom = study_files(cohort, i)
        files = [("dicom", (p.name, p.read_bytes(), "application/dicom")) for p in dicom]
        files.append(("bundle", ("b.json", bundle.read_bytes(), "application/json")))
        response = httpx.post(f"{url}/v1/crosscheck", files=files, headers={"X-API-Key": API_KEY}, timeout=60)
        assert response.status_code == 200, response.text
        out[case["study_instance_uid"]] = response.json()["results"][0]
    return out


def test_discovery_lists_the_three_hooks(serve: Serve) -> None:
    with serve(**SETTINGS) as url:
        services = httpx.get(f"{url}/cds-services").json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "order-sign", "report-sign"}
    for s in services:
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["id"] and s["title"] and s["description"]


def test_patient_view_answers_from_the_store_with_a_card_and_takes_feedback(
    serve: Serve, cohort: Path, cds_client: SimulatedCdsClient, tmp_path: Path
) -> None:
    _, bundle_path, _ = study_files(cohort, 0)
    bundle = json.loads(bundle_path.read_text())
    with serve(**SETTINGS) as url:
        scored = _score_patient_studies(url, cohort, [0, 1])
        flagged = [uid for uid, item in scored.items() if item["result"]["flagged"]]
        assert flagged, "the synthetic study of pat-000000 should be flagged by the shipped model"
        endpoint = f"{url}/cds-services/{SERVICE}"
        start = time.perf_counter()
        response = httpx.post(
            endpoint, json=_call_body(bundle), headers={"Authorization": cds_client.authorization(endpoint)}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        CdsResponse.model_validate(body)  # the specification's shape
        cards = body["cards"]
        assert len(cards) == len(flagged)
        card = cards[0]
        assert len(card["summary"]) < 140
        assert card["indicator"] in ("warning", "critical")
        assert card["source"]["label"] == "imaging-crosscheck"
        assert all(link["url"].startswith("http") for link in card["links"])
        assert any(flagged[0] in link["url"] for link in card["links"])
        assert "Image verified with the modality" in {r["display"] for r in card["overrideReasons"]}
        assert "null" not in json.dumps(body)
        assert time.perf_counter() - start < 30  # a sanity bound only; latency is measured in bench/

        feedback_url = f"{endpoint}/feedback"
        reason = card["overrideReasons"][0]
        fb = {
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": reason, "userComment": "checked with the modality"},
                    "outcomeTimestamp": "2026-12-02T10:00:00Z",
                }
            ]
        }
        stored = httpx.post(
            feedback_url, json=fb, headers={"Authorization": cds_client.authorization(feedback_url)}
        )
        assert stored.status_code == 200, stored.text
    with Store.open(f"sqlite:///{tmp_path / 'data' / 'crosscheck.db'}") as store:
        (kept,) = store.feedback_for(card_uuid=card["uuid"])
        assert kept.outcome == "overridden" and kept.override_reason is not None
        assert kept.override_reason.code == reason["code"]
        assert kept.result_id == scored[flagged[0]]["id"]  # the card's result, for training labels
        assert kept.client_iss == cds_client.iss
        actions = [e.action for e in store.audit_events(limit=100)]
        assert "cds.call" in actions and "feedback" in actions
        case = CaseQueue(store).case_for_study(flagged[0])  # the flagged study is in the queue
        assert case is not None and case.status == "new" and case.result_id == kept.result_id
        clean = [uid for uid in scored if uid not in flagged]
        assert all(CaseQueue(store).case_for_study(uid) is None for uid in clean)


def test_say_consistent_gives_an_info_card(
    serve: Serve, cohort: Path, cds_client: SimulatedCdsClient
) -> None:
    _, bundle_path, _ = study_files(cohort, 2)  # pat-000001: one clean study
    with serve(say_consistent=True, **SETTINGS) as url:
        scored = _score_patient_studies(url, cohort, [2])
        assert not next(iter(scored.values()))["result"]["flagged"]
        endpoint = f"{url}/cds-services/{SERVICE}"
        body = _call_body(json.loads(bundle_path.read_text()))
        response = httpx.post(
            endpoint, json=body, headers={"Authorization": cds_client.authorization(endpoint)}
        )
    (card,) = response.json()["cards"]
    assert card["indicator"] == "info"


def _outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def test_forged_expired_replayed_wrong_audience_and_unsigned_tokens_are_refused(
    serve: Serve, cohort: Path, cds_client: SimulatedCdsClient
) -> None:
    _, bundle_path, _ = study_files(cohort, 2)
    body = _call_body(json.loads(bundle_path.read_text()))
    now = int(time.time())
    with serve(**SETTINGS) as url:
        endpoint = f"{url}/cds-services/{SERVICE}"
        stranger = SimulatedCdsClient("https://stranger.example.org")
        bad = {
            "forged": cds_client.token(endpoint, key=new_key("ES384")),
            "expired": cds_client.token(endpoint, iat=now - 600, exp=now - 300),
            "wrong audience": cds_client.token(f"{url}/cds-services/another"),
            "unsigned": cds_client.token(endpoint, algorithm="none"),
            "hmac": cds_client.token(endpoint, algorithm="HS256"),
            "no kid": cds_client.token(endpoint, headers={"kid": OMIT}),
            "unknown issuer": stranger.token(endpoint),
        }
        for name, token in bad.items():
            response = httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {token}"})
            _outcome(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
            assert token not in response.text
        _outcome(httpx.post(endpoint, json=body), 401)
        once = cds_client.token(endpoint)
        assert httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {once}"}).status_code == 200
        _outcome(
            httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {once}"}), 401
        )  # replayed


def test_bad_calls_get_specific_answers(serve: Serve, cohort: Path, cds_client: SimulatedCdsClient) -> None:
    _, bundle_path, _ = study_files(cohort, 2)
    bundle = json.loads(bundle_path.read_text())
    with serve(**SETTINGS) as url:
        endpoint = f"{url}/cds-services/{SERVICE}"

        def post(body: Any, where: str = endpoint) -> httpx.Response:
            return httpx.post(where, json=body, headers={"Authorization": cds_client.authorization(where)})

        no_prefetch = _call_body(bundle)
        del no_prefetch["prefetch"]
        _outcome(post(no_prefetch), 412)
        missing = _call_body(bundle)
        del missing["hookInstance"]
        issues = _outcome(post(missing), 400)["issue"]
        assert any("hookInstance" in i.get("expression", [""])[0] for i in issues)
        wrong_hook = _call_body(bundle, hook="order-select")
        _outcome(post(wrong_hook), 400)
        _outcome(post(_call_body(bundle), f"{url}/cds-services/no-such-service"), 404)
        not_json = httpx.post(
            endpoint, content=b"{", headers={"Authorization": cds_client.authorization(endpoint)}
        )
        _outcome(not_json, 400)
        feedback = f"{endpoint}/feedback"
        _outcome(post({"feedback": [{"card": "x", "outcome": "maybe"}]}, feedback), 400)
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_cors_preflight_is_answered(serve: Serve) -> None:
    with serve(**SETTINGS) as url:
        response = httpx.options(
            f"{url}/cds-services/{SERVICE}",
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://sandbox.cds-hooks.org")
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
