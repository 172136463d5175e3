"""`plugin.writeback.fhir`: DetectedIssue and RiskAssessment from a result, and their idempotent write
(against a scripted FHIR server, `httpx.MockTransport`; the real one is in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from connectors.errors import RequestRejected
from connectors.fhir.extract import validate_resource
from connectors.fhir.rest import FhirClient
from connectors.http import RetryPolicy
from fusion.result import Finding, ModelInfo, Severity
from plugin.errors import InvalidWriteBack, UnsuitableResult, WriteBackError
from plugin.writeback import fhir as wb
from plugin.writeback.codes import FINDING_SYSTEM, IDENTIFIER_SYSTEM, ISSUE_SYSTEM, MODEL_SHA256_SYSTEM

BASE = "https://ehr.example.org/fhir"
REFS = {"patient_reference": "Patient/pat-1", "imaging_study_reference": "ImagingStudy/is-1"}
WHEN = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


def _json(resource: Any) -> dict[str, Any]:
    data: dict[str, Any] = resource.model_dump(mode="json")
    return data


def _codes(concept: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in concept["coding"]]


# -- DetectedIssue ----------------------------------------------------------------------------------


def test_detected_issue_of_a_flagged_study(make_result) -> None:
    result = make_result()
    issue = _json(
        wb.detected_issue(
            result, **REFS, review_url="https://crosscheck.example.org/review/1", identified=WHEN
        )
    )
    validate_resource(issue)  # R4 again, with the required bindings the connectors check
    assert issue["status"] == "final"
    assert issue["severity"] == "high"  # a critical finding
    assert _codes(issue["code"]) == [(ISSUE_SYSTEM, "synthetic-image")]
    assert issue["patient"] == {"reference": "Patient/pat-1"}
    assert issue["implicated"] == [{"reference": "ImagingStudy/is-1"}]
    assert issue["identifiedDateTime"] == "2024-03-01T12:30:00Z"
    assert issue["reference"] == "https://crosscheck.example.org/review/1"
    assert "synthetic or tampered" in issue["detail"] and "0.98" in issue["detail"]
    (identifier,) = issue["identifier"]
    assert identifier["system"] == IDENTIFIER_SYSTEM and identifier["value"].startswith("urn:uuid:")


def test_detected_issue_evidence_names_each_finding_and_its_fhir_resources(make_result) -> None:
    issue = _json(wb.detected_issue(make_result(), **REFS))
    evidence = issue["evidence"]
    assert [_codes(e["code"][0]) for e in evidence] == [
        [(FINDING_SYSTEM, "model.synthetic")],
        [(FINDING_SYSTEM, "dates.study-before-order")],
    ]  # worst first; the info finding is not evidence of an issue
    assert evidence[0]["code"][0]["text"].startswith("The pixels look synthetic")
    assert "detail" not in evidence[0]  # a computed value, no resource behind it
    assert evidence[1]["detail"] == [{"reference": "ServiceRequest/sr-1"}]  # the DICOM evidence is not FHIR


def test_detected_issue_names_the_algorithm_in_a_contained_device(make_result) -> None:
    issue = _json(wb.detected_issue(make_result(), **REFS))
    (device,) = issue["contained"]
    assert issue["author"]["reference"] == f"#{device['id']}"
    assert device["resourceType"] == "Device" and device["manufacturer"] == "imaging-crosscheck"
    assert device["deviceName"] == [{"name": "crosscheck-fusion-small", "type": "model-name"}]
    assert device["version"] == [{"value": "0.2.0"}]
    assert device["identifier"] == [{"system": MODEL_SHA256_SYSTEM, "value": "ab" * 32}]


def test_identifier_is_the_same_for_the_same_study_and_model_and_differs_otherwise(make_result) -> None:
    def identifier(result: Any) -> str:
        return str(_json(wb.detected_issue(result, **REFS))["identifier"][0]["value"])

    first = identifier(make_result())
    assert identifier(make_result(overall=0.99)) == first  # scored again: the same issue
    assert identifier(make_result(study="1.2.3.4")) != first
    assert identifier(make_result(model=ModelInfo("crosscheck-fusion-small", "0.3.0", "cd" * 32))) != first
    risk = _json(wb.risk_assessment(make_result(), **REFS))["identifier"][0]["value"]
    assert risk != first  # one identifier per resource type


def test_detected_issue_for_an_unflagged_study_is_refused(make_result) -> None:
    with pytest.raises(UnsuitableResult, match=r"not flagged.*RiskAssessment"):
        wb.detected_issue(make_result(flagged=False), **REFS)


@pytest.mark.parametrize(
    ("worst", "severity"),
    [(Severity.CRITICAL, "high"), (Severity.WARNING, "moderate"), (Severity.INFO, "low"), (None, "low")],
)
def test_severity_follows_the_worst_finding(make_result, worst: Severity | None, severity: str) -> None:
    findings = () if worst is None else (Finding("order.missing", worst, "No order was found."),)
    issue = _json(wb.detected_issue(make_result(findings=findings), **REFS))
    assert issue["severity"] == severity


@pytest.mark.parametrize(
    ("scores", "findings", "code"),
    [
        ({"consistency": 0.1, "synthetic": 0.2}, (), "image-record-mismatch"),
        ({"consistency": 0.05, "synthetic": 0.9}, (), "image-record-mismatch"),  # the stronger head wins
        ({"consistency": 0.9, "synthetic": 0.9}, (), "synthetic-image"),
        (
            {"consistency": None, "synthetic": None},
            (Finding("identity.birth-date-mismatch", Severity.CRITICAL, "Birth dates differ."),),
            "image-record-mismatch",
        ),
        (
            {"consistency": 0.9, "synthetic": 0.1},
            (Finding("pixels.constant", Severity.CRITICAL, "The image is one value."),),
            "flagged-for-review",
        ),
    ],
)
def test_code_says_what_is_wrong(
    make_result, scores: dict[str, Any], findings: tuple[Finding, ...], code: str
) -> None:
    issue = _json(wb.detected_issue(make_result(findings=findings, **scores), **REFS))
    assert _codes(issue["code"]) == [(ISSUE_SYSTEM, code)]


@pytest.mark.parametrize(
    "arguments",
    [
        {"patient_reference": "pat-1"},
        {"patient_reference": "Practitioner/1"},
        {"patient_reference": "Patient/a b"},
        {"imaging_study_reference": "ImagingStudy/"},
        {"review_url": "/review/1"},
        {"identified": datetime(2024, 3, 1, 12, 30)},  # naive: FHIR needs the offset
    ],
)
def test_bad_arguments_are_unsuitable(make_result, arguments: dict[str, Any]) -> None:
    with pytest.raises(UnsuitableResult):
        wb.detected_issue(make_result(), **{**REFS, **arguments})


def test_absolute_references_and_offsets_are_kept(make_result) -> None:
    issue = _json(
        wb.detected_issue(
            make_result(),
            patient_reference=f"{BASE}/Patient/pat-1",
            imaging_study_reference=f"{BASE}/ImagingStudy/is-1",
            identified=datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        )
    )
    assert issue["patient"]["reference"] == f"{BASE}/Patient/pat-1"
    assert issue["identifiedDateTime"] == "2024-03-01T12:30:00+02:00"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (None, "names no model"),
        (ModelInfo("m", "1", "not-a-sha"), "sha256"),
        (ModelInfo(" ", "1", "ab" * 32), "name"),
    ],
)
def test_a_result_without_a_proper_model_is_unsuitable(
    make_result, model: ModelInfo | None, message: str
) -> None:
    with pytest.raises(UnsuitableResult, match=message):
        wb.detected_issue(make_result(model=model), **REFS)


def test_a_resource_that_does_not_validate_is_reported_as_our_bug(make_result, monkeypatch) -> None:
    monkeypatch.setattr(
        wb, "_device", lambda model: {"resourceType": "Device", "id": "algorithm", "version": 7}
    )
    with pytest.raises(InvalidWriteBack, match="bug in imaging-crosscheck") as caught:
        wb.detected_issue(make_result(), **REFS)
    assert caught.value.what == "DetectedIssue" and "version" in caught.value.reason
    assert isinstance(caught.value, WriteBackError)


# -- RiskAssessment ---------------------------------------------------------------------------------


def test_risk_assessment_predicts_both_outcomes(make_result) -> None:
    risk = _json(wb.risk_assessment(make_result(consistency=0.25, synthetic=0.6), **REFS, occurrence=WHEN))
    validate_resource(risk)
    assert risk["status"] == "final"
    assert risk["subject"] == {"reference": "Patient/pat-1"}
    assert risk["basis"] == [{"reference": "ImagingStudy/is-1"}]
    assert risk["occurrenceDateTime"] == "2024-03-01T12:30:00Z"
    predictions = {p["outcome"]["coding"][0]["code"]: p["probabilityDecimal"] for p in risk["prediction"]}
    assert predictions == {"image-record-mismatch": 0.75, "synthetic-image": 0.6}
    assert "crosscheck-fusion-small" in risk["method"]["text"] and "0.2.0" in risk["method"]["text"]
    (device,) = risk["contained"]
    assert risk["performer"]["reference"] == f"#{device['id']}"


def test_risk_assessment_of_an_unflagged_study_says_so(make_result) -> None:
    risk = _json(wb.risk_assessment(make_result(flagged=False, consistency=0.95, synthetic=0.03), **REFS))
    assert "not flagged" in risk["note"][0]["text"]
    assert [p["probabilityDecimal"] for p in risk["prediction"]] == [0.05, 0.03]


def test_risk_assessment_keeps_only_what_the_model_scored(make_result) -> None:
    risk = _json(wb.risk_assessment(make_result(consistency=None, synthetic=0.4), **REFS))
    assert [p["outcome"]["coding"][0]["code"] for p in risk["prediction"]] == ["synthetic-image"]
    with pytest.raises(UnsuitableResult, match="no model probability"):
        wb.risk_assessment(make_result(consistency=None, synthetic=None), **REFS)


# -- writing ----------------------------------------------------------------------------------------


class Server:
    """A scripted FHIR server that records its requests."""

    def __init__(self, status: int = 201, body: dict[str, Any] | None = None) -> None:
        self.status, self.body = status, body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.body is not None:
            return httpx.Response(self.status, json=self.body)
        sent = json.loads(request.content)
        return httpx.Response(
            self.status, json={**sent, "id": sent.get("id", "new-1"), "meta": {"versionId": "1"}}
        )

    def write(self, coroutine: Any) -> str:
        async def go() -> str:
            async with FhirClient(
                BASE, transport=httpx.MockTransport(self), retry=RetryPolicy(attempts=2, backoff=0.001)
            ) as client:
                return str(await coroutine(client))

        return asyncio.run(go())


def test_conditional_create_posts_with_if_none_exist_on_the_identifier(make_result) -> None:
    issue = wb.detected_issue(make_result(), **REFS)
    server = Server()
    reference = server.write(lambda client: wb.write_detected_issue(client, issue))
    assert reference == "DetectedIssue/new-1"
    (request,) = server.requests
    assert request.method == "POST" and str(request.url) == f"{BASE}/DetectedIssue"
    value = _json(issue)["identifier"][0]["value"]
    assert parse_qsl(request.headers["If-None-Exist"]) == [("identifier", f"{IDENTIFIER_SYSTEM}|{value}")]
    assert json.loads(request.content)["resourceType"] == "DetectedIssue"


def test_update_as_create_puts_at_an_id_derived_from_the_identifier(make_result) -> None:
    risk = wb.risk_assessment(make_result(), **REFS)
    server = Server(status=200)
    reference = server.write(lambda client: wb.write_risk_assessment(client, risk, mode="update-as-create"))
    value = _json(risk)["identifier"][0]["value"]
    uuid = value.removeprefix("urn:uuid:")
    assert reference == f"RiskAssessment/{uuid}"
    (request,) = server.requests
    assert request.method == "PUT" and str(request.url) == f"{BASE}/RiskAssessment/{uuid}"
    assert json.loads(request.content)["id"] == uuid


def test_a_refusal_by_the_server_is_the_connectors_error(make_result) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "Unknown search parameter"}],
    }
    server = Server(status=400, body=outcome)
    issue = wb.detected_issue(make_result(), **REFS)
    with pytest.raises(RequestRejected) as caught:
        server.write(lambda client: wb.write_detected_issue(client, issue))
    assert caught.value.status == 400 and any("Unknown search parameter" in i for i in caught.value.issues)


def test_a_resource_without_our_identifier_is_not_written(make_result) -> None:
    issue = wb.detected_issue(make_result(), **REFS)
    issue.identifier = None
    server = Server()
    with pytest.raises(UnsuitableResult, match="identifier"):
        server.write(lambda client: wb.write_detected_issue(client, issue))
    assert server.requests == []
