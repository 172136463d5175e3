"""`load_prefetch`: prefetch first, the rest from fhirServer (`httpx.MockTransport`), else 412."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from connectors.http import RetryPolicy
from connectors.strictness import Strictness
from plugin.cds.models import parse_request
from plugin.cds.prefetch import Prefetched, load_prefetch
from plugin.cds.services import SERVICES, CdsService
from plugin.cds.tokens import parse_relative_url, render_template
from plugin.errors import CdsRequestInvalid, PrefetchInvalid, PrefetchUnavailable

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SERVER = "https://ehr.example.org/fhir"
TOKEN = "opaque-access-token-123"
FAST = RetryPolicy(attempts=1, backoff=0.001, max_wait=0.01)
SUBJECT = {"reference": "Patient/p-1"}
SPEC_EXAMPLES = json.loads((Path(__file__).parent / "data" / "spec_examples.json").read_text())

PATIENT_VIEW = SERVICES["imaging-crosscheck-patient-view"]
ORDER_SIGN = SERVICES["imaging-crosscheck-order-sign"]
REPORT_SIGN = SERVICES["imaging-crosscheck-report-sign"]


# -- resources --------------------------------------------------------------------------------------------


def days_ago(n: float) -> str:
    return (NOW - timedelta(days=n)).isoformat()


def lab(oid: str, value: float = 13.5, subject: dict[str, str] = SUBJECT) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
        "subject": subject,
        "effectiveDateTime": days_ago(3),
        "valueQuantity": {
            "value": value,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }


def imaging_study(sid: str, started_days_ago: float, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": sid,
        "status": "available",
        "subject": SUBJECT,
        "started": days_ago(started_days_ago),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.3.{sid[3:]}"}],
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
        **fields,
    }


def report(rid: str, *studies: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
        "subject": SUBJECT,
        "imagingStudy": [{"reference": f"ImagingStudy/{s}"} for s in studies],
        **fields,
    }


def condition(cid: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": SUBJECT,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    }


ENDPOINT = {
    "resourceType": "Endpoint",
    "id": "ep-1",
    "status": "active",
    "connectionType": {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "dicom-wado-rs",
    },
    "payloadType": [{"text": "DICOM"}],
    "address": "https://pacs.example.org/dicom-web",
}


def chart(patient_id: str = "p-1") -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1970-02-03"},
        imaging_study("is-1", 2, endpoint=[{"reference": "Endpoint/ep-1"}]),
        imaging_study("is-2", 200),
        report("dr-1", "is-1"),
        lab("obs-1", 12.0),
        lab("obs-2", 13.0),
        lab("obs-3", 14.0),
        condition("c-1"),
        condition("c-2"),
        condition("c-3"),
        ENDPOINT,
    ]


# -- a FHIR server ----------------------------------------------------------------------------------------


class FakeFhir:
    """A FHIR server over a list of resources: reads, ``patient``/``category``/``_id`` searches,
    pages of at most ``page_size`` (it ignores a larger ``_count``) with ``next`` links."""

    def __init__(self, resources: list[dict[str, Any]], base: str = SERVER, page_size: int = 2) -> None:
        self.resources = resources
        self.base = base.rstrip("/")
        self.page_size = page_size
        self.requests: list[httpx.Request] = []
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json={"resourceType": "OperationOutcome", "issue": []})
        path = str(request.url.copy_with(query=None)).removeprefix(self.base).strip("/").split("/")
        params = parse_qsl(request.url.query.decode())
        if len(path) == 2:
            found = [r for r in self.resources if (r["resourceType"], r["id"]) == tuple(path)]
            if not found:
                return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
            return httpx.Response(200, json=found[0])
        return httpx.Response(200, json=self.search(path[0], params))

    def search(self, rtype: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        matches = [r for r in self.resources if r["resourceType"] == rtype]
        for name, value in params:
            if name == "patient":
                matches = [
                    r for r in matches if (r.get("subject") or {}).get("reference") == f"Patient/{value}"
                ]
            elif name == "category":
                matches = [
                    r for r in matches if any(c["code"] == value for x in r["category"] for c in x["coding"])
                ]
            elif name == "_id":
                matches = [r for r in matches if r["id"] in value.split(",")]
        count = min(int(dict(params).get("_count", self.page_size)), self.page_size)
        offset = int(dict(params).get("_offset", 0))
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches[offset : offset + count]],
        }
        if offset + count < len(matches):
            query = "&".join(f"{k}={v}" for k, v in params if k != "_offset")
            bundle["link"] = [
                {"relation": "next", "url": f"{self.base}/{rtype}?{query}&_offset={offset + count}"}
            ]
        return bundle

    def answer(self, relative_url: str) -> dict[str, Any] | None:
        """What this server answers to a rendered template: what a CDS Client would prefetch."""
        query = parse_relative_url(relative_url)
        if query.is_read:
            found = [
                r
                for r in self.resources
                if (r["resourceType"], r["id"]) == (query.resource_type, query.resource_id)
            ]
            return found[0] if found else None
        return self.search(query.resource_type, list(query.params))


def request(
    service: CdsService,
    *,
    prefetch: dict[str, Any] | None = None,
    server: bool = True,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": service.hook.name,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context or {"userId": "Practitioner/dr-1", "patientId": "p-1"},
    }
    if server:
        body["fhirServer"] = SERVER
        body["fhirAuthorization"] = {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "imaging-crosscheck",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def full_prefetch(
    fhir: FakeFhir, service: CdsService, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    parsed = service.hook.context.model_validate(
        context or {"userId": "Practitioner/dr-1", "patientId": "p-1"}
    )
    out = {}
    for key, template in service.prefetch.items():
        url = render_template(template, parsed)
        assert url is not None
        out[key] = fhir.answer(url)
    return out


def load(
    body: dict[str, Any],
    service: CdsService,
    fhir: FakeFhir | None = None,
    needed: Collection[str] | None = None,
    **options: Any,
) -> Prefetched:
    transport = httpx.MockTransport(fhir or FakeFhir([]))
    return asyncio.run(
        load_prefetch(
            parse_request(body), service, needed=needed, now=NOW, retry=FAST, transport=transport, **options
        )
    )


# -- prefetch only ----------------------------------------------------------------------------------------


def test_everything_prefetched_needs_no_server() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    got = load(request(PATIENT_VIEW, prefetch=full_prefetch(fhir, PATIENT_VIEW), server=False), PATIENT_VIEW)
    assert set(got.sources.values()) == {"prefetch"}
    assert got.requests == 0 and not fhir.requests
    assert [lab.id for lab in got.record.labs] == ["obs-1", "obs-2", "obs-3"]
    assert [c.id for c in got.record.conditions] == ["c-1", "c-2", "c-3"]
    assert [(s.study.id, s.study_instance_uid) for s in got.studies] == [("is-1", "1.2.3.1")]
    assert got.context.patientId == "p-1"


def test_missing_keys_without_server_are_412() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    del prefetch["conditions"], prefetch["laboratory"]
    with pytest.raises(PrefetchUnavailable) as exc:
        load(request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW)
    assert set(exc.value.keys) == {"conditions", "laboratory"}
    assert "fhirServer" in str(exc.value)
    with pytest.raises(PrefetchUnavailable):  # nothing at all
        load(request(PATIENT_VIEW, server=False), PATIENT_VIEW)


def test_keys_not_needed_may_be_missing() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    prefetch = {k: prefetch[k] for k in ("patient", "imagingStudies")}
    got = load(
        request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW, needed={"imagingStudies"}
    )
    assert got.sources["conditions"] == "not needed" and got.sources["imagingStudies"] == "prefetch"
    assert [s.study.id for s in got.studies] == ["is-1"] and got.record.labs == ()
    with pytest.raises(ValueError, match="no prefetch keys"):
        load(request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW, needed={"weather"})


def test_null_means_no_data_and_is_not_queried() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = {**full_prefetch(fhir, PATIENT_VIEW), "conditions": None, "laboratory": None}
    got = load(request(PATIENT_VIEW, prefetch=prefetch), PATIENT_VIEW, fhir)
    assert got.sources["conditions"] == "null" and got.record.conditions == () and got.record.labs == ()
    assert got.requests == 0 and not fhir.requests


def test_operation_outcome_is_not_queried_again() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "lab system down"}],
    }
    prefetch = {**full_prefetch(fhir, PATIENT_VIEW), "laboratory": outcome}
    with pytest.raises(PrefetchUnavailable) as exc:
        load(request(PATIENT_VIEW, prefetch=prefetch), PATIENT_VIEW, fhir)
    assert exc.value.keys == ("laboratory",) and "lab system down" in str(exc.value)
    assert not fhir.requests
    got = load(request(PATIENT_VIEW, prefetch=prefetch), PATIENT_VIEW, fhir, needed={"imagingStudies"})
    assert got.sources["laboratory"] == "OperationOutcome"


def test_unsatisfiable_template_has_no_data() -> None:
    service = CdsService(
        "with-encounter",
        PATIENT_VIEW.hook,
        "t",
        "d",
        prefetch={
            "patient": "Patient/{{context.patientId}}",
            "encounter": "Encounter/{{context.encounterId}}",
        },
    )
    fhir = FakeFhir(chart())
    got = load(request(service, prefetch={"patient": fhir.answer("Patient/p-1")}, server=False), service)
    assert got.sources == {"patient": "prefetch", "encounter": "no token"}


def test_prefetched_search_with_more_pages_and_no_server_is_incomplete() -> None:
    fhir = FakeFhir(chart(), page_size=2)
    got = load(request(PATIENT_VIEW, prefetch=full_prefetch(fhir, PATIENT_VIEW), server=False), PATIENT_VIEW)
    assert got.incomplete == ("conditions",)  # the _count templates asked for one page only
    assert len(got.record.conditions) == 2


# -- the FHIR server -------------------------------------------------------------------------------------


def test_missing_keys_are_read_from_the_fhir_server() -> None:
    fhir = FakeFhir(chart(), page_size=2)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    del prefetch["laboratory"], prefetch["conditions"], prefetch["patient"]
    got = load(request(PATIENT_VIEW, prefetch=prefetch), PATIENT_VIEW, fhir)
    assert {k for k, v in got.sources.items() if v == "fhirServer"} == {"laboratory", "conditions", "patient"}
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fhir.requests)
    assert len(got.record.labs) == 2  # _count: one page, the most recent
    assert len(got.record.conditions) == 3  # no _count: every page
    searched = [
        dict(parse_qsl(r.url.query.decode())) for r in fhir.requests if r.url.path.endswith("/Observation")
    ]
    assert searched == [{"patient": "p-1", "category": "laboratory", "_sort": "-date", "_count": "200"}]
    assert got.requests == len(fhir.requests)


def test_more_pages_of_a_prefetched_search_are_read_from_the_server() -> None:
    fhir = FakeFhir(chart(), page_size=2)
    got = load(request(PATIENT_VIEW, prefetch=full_prefetch(fhir, PATIENT_VIEW)), PATIENT_VIEW, fhir)
    assert len(got.record.conditions) == 3 and got.incomplete == ()


def test_spec_patient_view_example_against_its_fhir_server() -> None:
    body = SPEC_EXAMPLES["request_patient_view"]["json"]
    base = body["fhirServer"]
    fhir = FakeFhir(
        [
            {**r, "id": "1288992"}
            if r["resourceType"] == "Patient"
            else {**r, "subject": {"reference": "Patient/1288992"}}
            for r in chart()
            if r["resourceType"] != "Endpoint"
        ]
        + [ENDPOINT],
        base=base,
        page_size=50,
    )
    got = load(body, PATIENT_VIEW, fhir)
    assert got.record.patient.id == "1288992" and got.record.patient.gender == "female"
    assert [s.study.id for s in got.studies] == ["is-1"]
    assert got.record.imaging_studies[0].endpoint == "https://pacs.example.org/dicom-web"  # Endpoint read
    assert all(str(r.url).startswith(base) for r in fhir.requests)
    assert all(r.headers["Authorization"] == "Bearer some-opaque-fhir-access-token" for r in fhir.requests)


def test_server_refusal_is_412_without_the_token() -> None:
    fhir = FakeFhir(chart())
    fhir.status = 401
    with pytest.raises(PrefetchUnavailable) as exc:
        load(request(PATIENT_VIEW), PATIENT_VIEW, fhir)
    assert "HTTP 401" in str(exc.value) and TOKEN not in str(exc.value)
    assert set(exc.value.keys) == set(PATIENT_VIEW.prefetch)


def test_patient_the_server_does_not_have_is_412() -> None:
    fhir = FakeFhir(chart(patient_id="someone-else"))
    with pytest.raises(PrefetchUnavailable) as exc:
        load(request(PATIENT_VIEW), PATIENT_VIEW, fhir)
    assert exc.value.keys == ("patient",)


def test_https_only() -> None:
    body = request(PATIENT_VIEW)
    body["fhirServer"] = "http://ehr.example.org/fhir"
    with pytest.raises(CdsRequestInvalid) as exc:
        load(body, PATIENT_VIEW, FakeFhir(chart(), base="http://ehr.example.org/fhir"), https_only=True)
    assert [p.location for p in exc.value.problems] == ["fhirServer"]


# -- what is not valid -----------------------------------------------------------------------------------


def test_invalid_resource_names_its_key() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    prefetch["laboratory"]["entry"][1]["resource"] = {**lab("obs-2"), "status": "done"}
    with pytest.raises(PrefetchInvalid) as exc:
        load(request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW)
    assert exc.value.key == "laboratory"
    assert [p.location for p in exc.value.problems] == ["prefetch.laboratory"]
    assert "Observation/obs-2" in str(exc.value) and "status" in str(exc.value)
    got = load(
        request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW, strictness=Strictness.WARN
    )
    assert [lab.id for lab in got.record.labs] == ["obs-1", "obs-3"]
    assert got.record.problems and got.record.problems[0].startswith("Observation/obs-2")


def test_another_patients_resource_is_invalid() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    prefetch["laboratory"]["entry"].append({"resource": lab("obs-9", subject={"reference": "Patient/p-2"})})
    with pytest.raises(PrefetchInvalid) as exc:
        load(request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW)
    assert exc.value.key == "laboratory" and "subject" in str(exc.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "patient",
            {"resourceType": "Bundle", "type": "searchset"},
            "must be the Patient its template reads",
        ),
        ("patient", {"resourceType": "Patient", "id": "p-2"}, "must be the Patient its template reads"),
        ("conditions", {"resourceType": "Condition", "id": "c-1"}, "must be a searchset Bundle"),
        ("conditions", "Condition/c-1", "must be a FHIR resource, a Bundle, or null"),
        ("conditions", {"resourceType": "Bundle", "entry": {}}, "must be an array"),
    ],
)
def test_value_not_what_the_template_asks_for(key: str, value: Any, message: str) -> None:
    fhir = FakeFhir(chart(), page_size=50)
    prefetch = {**full_prefetch(fhir, PATIENT_VIEW), key: value}
    for strictness in Strictness:
        with pytest.raises(PrefetchInvalid) as exc:
            load(request(PATIENT_VIEW, prefetch=prefetch, server=False), PATIENT_VIEW, strictness=strictness)
        assert exc.value.key == key and message in str(exc.value)


def test_invalid_context_is_400() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        load(request(PATIENT_VIEW, context={"userId": "Practitioner/1"}), PATIENT_VIEW)
    assert [p.location for p in exc.value.problems] == ["context.patientId"]


# -- order-sign and report-sign --------------------------------------------------------------------------


def draft_order(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr-new",
        "status": "draft",
        "intent": "order",
        "subject": SUBJECT,
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}],
        **fields,
    }


def test_order_sign_reads_the_cited_report_and_its_study() -> None:
    old = [imaging_study("is-7", 900), report("dr-7", "is-7")]
    fhir = FakeFhir(chart() + old, page_size=50)
    context = {
        "userId": "Practitioner/dr-1",
        "patientId": "p-1",
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft_order(reasonReference=[{"reference": "DiagnosticReport/dr-7"}])}],
        },
    }
    prefetch = full_prefetch(fhir, ORDER_SIGN, context)
    for key in ("imagingStudies", "diagnosticReports"):  # as if the old ones fell outside _count
        prefetch[key]["entry"] = [
            e for e in prefetch[key]["entry"] if e["resource"]["id"] not in ("is-7", "dr-7")
        ]
    got = load(request(ORDER_SIGN, prefetch=prefetch, context=context), ORDER_SIGN, fhir)
    assert [(s.study.id, s.reason) for s in got.studies] == [
        ("is-7", "cited by ServiceRequest/sr-new (reasonReference)")
    ]
    read = [r.url.path.removeprefix("/fhir/") for r in fhir.requests if "?" not in str(r.url)]
    assert read == ["DiagnosticReport/dr-7", "ImagingStudy/is-7"]
    assert all(o.id != "sr-new" for o in got.record.orders)  # orders being signed are not the record


def test_report_sign_puts_the_report_being_signed_in_the_record() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    draft = report("dr-new", "is-2", status="preliminary", conclusion="No acute findings.")
    context = {
        "userId": "Practitioner/dr-1",
        "patientId": "p-1",
        "draftReports": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
    }
    got = load(
        request(REPORT_SIGN, prefetch=full_prefetch(fhir, REPORT_SIGN, context), context=context), REPORT_SIGN
    )
    assert [s.study.id for s in got.studies] == ["is-2"]
    signed = next(r for r in got.record.reports if r.id == "dr-new")
    assert signed.status == "preliminary" and signed.conclusion == "No acute findings."


def test_report_sign_invalid_draft_is_a_context_problem() -> None:
    fhir = FakeFhir(chart(), page_size=50)
    context = {
        "userId": "Practitioner/dr-1",
        "patientId": "p-1",
        "draftReports": {
            "resourceType": "Bundle",
            "entry": [{"resource": {**report("dr-new", "is-1"), "status": "draft"}}],
        },
    }
    with pytest.raises(CdsRequestInvalid) as exc:
        load(
            request(REPORT_SIGN, prefetch=full_prefetch(fhir, REPORT_SIGN, context), context=context),
            REPORT_SIGN,
        )
    assert not isinstance(exc.value, PrefetchInvalid)
    assert [p.location for p in exc.value.problems] == ["context.draftReports"]


def test_cited_resource_of_another_patient_is_left_out() -> None:
    elsewhere = {**report("dr-8", "is-1"), "subject": {"reference": "Patient/p-2"}}
    fhir = FakeFhir([*chart(), elsewhere], page_size=50)
    context = {
        "userId": "Practitioner/dr-1",
        "patientId": "p-1",
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [{"resource": draft_order(supportingInfo=[{"reference": "DiagnosticReport/dr-8"}])}],
        },
    }
    got = load(
        request(ORDER_SIGN, prefetch=full_prefetch(fhir, ORDER_SIGN, context), context=context),
        ORDER_SIGN,
        fhir,
    )
    assert [r.url.path for r in fhir.requests] == ["/fhir/DiagnosticReport/dr-8", "/fhir/Endpoint"]
    assert [(s.study.id, s.reason) for s in got.studies] == [("is-1", "the patient's most recent study")]
    assert all(r.id != "dr-8" for r in got.record.reports)


def test_invalid_resource_from_the_server_names_its_key() -> None:
    fhir = FakeFhir([*chart(), {**condition("c-4"), "clinicalStatus": "active"}], page_size=50)
    prefetch = full_prefetch(fhir, PATIENT_VIEW)
    del prefetch["conditions"]
    with pytest.raises(PrefetchInvalid) as exc:
        load(request(PATIENT_VIEW, prefetch=prefetch), PATIENT_VIEW, fhir)
    assert exc.value.key == "conditions"
    assert [p.location for p in exc.value.problems] == ["conditions (from fhirServer)"]
    assert "Condition/c-4" in str(exc.value)
