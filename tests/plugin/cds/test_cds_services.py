"""The CDS Services: discovery, prefetch templates and tokens, and which study each hook checks."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.domain import DiagnosticReport, ImagingStudyRecord, Patient, PatientRecord
from plugin.cds.models import CdsRequest, HookContext, OrderSignContext, PatientViewContext, ReportSignContext
from plugin.cds.services import (
    ORDER_SIGN,
    PATIENT_VIEW,
    RECORD_PREFETCH,
    REPORT_SIGN,
    SERVICES,
    CdsService,
    StudyPolicy,
    discovery,
    find_service,
    make_services,
    resource_id,
)
from plugin.cds.tokens import USER_TOKENS, check_template, parse_relative_url, render_template, tokens_of
from plugin.errors import CdsRequestInvalid, UnknownCdsService

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
USER = {"userId": "Practitioner/dr-1", "patientId": "p-1"}


def service(hook_name: str) -> CdsService:
    return next(s for s in SERVICES.values() if s.hook.name == hook_name)


# -- discovery and templates ---------------------------------------------------------------------------


def test_discovery_lists_the_three_hooks() -> None:
    entries = discovery().to_json()["services"]
    assert [e["hook"] for e in entries] == ["patient-view", "order-sign", "report-sign"]
    for entry in entries:
        assert entry["id"] and entry["title"] and entry["description"] and entry["usageRequirements"]
        assert entry["prefetch"] == dict(RECORD_PREFETCH)
    assert len({e["id"] for e in entries}) == 3


def test_prefetch_asks_for_the_record() -> None:
    types = {
        parse_relative_url(t.replace("{{context.patientId}}", "p")).resource_type
        for t in RECORD_PREFETCH.values()
    }
    assert types == {
        "Patient",
        "ImagingStudy",
        "DiagnosticReport",
        "ServiceRequest",
        "Observation",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "Encounter",
    }


def test_templates_stay_in_the_recommended_query_subset() -> None:
    allowed_params = {"patient", "category", "_sort", "_count"}
    for key, template in RECORD_PREFETCH.items():
        assert tokens_of(template) == ["context.patientId"], key
        query = parse_relative_url(template.replace("{{context.patientId}}", "p"))
        assert {name for name, _ in query.params} <= allowed_params, key
        assert not any(":" in name for name, _ in query.params), key  # no modifiers


def test_check_template_refuses_tokens_the_hook_does_not_define() -> None:
    tokens = PATIENT_VIEW.prefetch_tokens
    check_template("Observation?patient={{context.patientId}}&performer={{userPractitionerId}}", tokens)
    with pytest.raises(ValueError, match="not one of"):
        check_template("Patient/{{context.draftOrders}}", ORDER_SIGN.prefetch_tokens)
    with pytest.raises(ValueError, match="root-level"):
        check_template("Patient/{{context.patient.id}}", tokens)
    with pytest.raises(ValueError, match="not one of"):
        check_template("Patient/{{patientId}}", tokens)
    with pytest.raises(ValueError, match="unbalanced"):
        check_template("Patient/{{context.patientId}", tokens)


def test_service_definition_checks_its_templates() -> None:
    with pytest.raises(ValueError, match="prefetch key 'x'"):
        CdsService(
            "s", PATIENT_VIEW, "t", "d", prefetch={"patient": "Patient/{{context.patientId}}", "x": "{{now}}"}
        )
    with pytest.raises(ValueError, match="'patient' key"):
        CdsService("s", PATIENT_VIEW, "t", "d", prefetch={"c": "Condition?patient={{context.patientId}}"})


def test_find_service() -> None:
    assert find_service("imaging-crosscheck-order-sign").hook is ORDER_SIGN
    with pytest.raises(UnknownCdsService, match="GET /cds-services"):
        find_service("nope")


def test_parse_context_checks_the_hook() -> None:
    request = CdsRequest(hook="order-sign", hookInstance="h", context=USER)
    with pytest.raises(CdsRequestInvalid) as exc:
        service("patient-view").parse_context(request)
    assert [p.location for p in exc.value.problems] == ["hook"]
    with pytest.raises(CdsRequestInvalid) as exc:
        service("order-sign").parse_context(request)
    assert [p.location for p in exc.value.problems] == ["context.draftOrders"]


# -- tokens ------------------------------------------------------------------------------------------------


def test_render_replaces_context_and_user_tokens() -> None:
    context = PatientViewContext(userId="PractitionerRole/r-9", patientId="p-1", encounterId="e-2")
    assert render_template("Encounter/{{context.encounterId}}", context) == "Encounter/e-2"
    assert (
        render_template("PractitionerRole?_id={{userPractitionerRoleId}}", context)
        == "PractitionerRole?_id=r-9"
    )
    assert render_template("{{context.userId}}", context) == "PractitionerRole/r-9"


def test_render_without_a_token_value_is_none() -> None:
    context = PatientViewContext(userId="PractitionerRole/r-9", patientId="p-1")
    assert render_template("Encounter/{{context.encounterId}}", context) is None
    assert render_template("Practitioner/{{userPractitionerId}}", context) is None
    assert set(USER_TOKENS) == {
        "userPractitionerId",
        "userPractitionerRoleId",
        "userPatientId",
        "userRelatedPersonId",
    }


def test_render_percent_encodes_values() -> None:
    class Loose(HookContext):
        note: str = ""

    context = Loose(userId="Practitioner/1", patientId="p", note="1&_include=*")
    assert render_template("Condition?note={{context.note}}", context) == "Condition?note=1%26_include%3D%2A"


def test_parse_relative_url() -> None:
    read = parse_relative_url("Patient/123")
    assert read.is_read and (read.resource_type, read.resource_id) == ("Patient", "123")
    search = parse_relative_url("Observation?patient=1&code=4548-4&_count=1&_sort=-date")
    assert not search.is_read and search.param("_count") == "1" and search.param("code") == "4548-4"
    for bad in ("patient/1", "Patient/1/_history/2", "Patient/a b", "Patient/1?x=1", "https://x/Patient/1"):
        with pytest.raises(ValueError):
            parse_relative_url(bad)


# -- which study each hook checks --------------------------------------------------------------------------


def study(sid: str, days_ago: float | None, **fields: Any) -> ImagingStudyRecord:
    started = None if days_ago is None else NOW - timedelta(days=days_ago)
    fields.setdefault("study_instance_uid", f"1.2.3.{sid.removeprefix('is-')}")
    fields.setdefault("status", "available")
    return ImagingStudyRecord(id=sid, started=started, **fields)


def record(*studies: ImagingStudyRecord, reports: tuple[DiagnosticReport, ...] = ()) -> PatientRecord:
    return PatientRecord(patient=Patient(id="p-1"), imaging_studies=studies, reports=reports)


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def order(sid: str = "sr-1", imaging: bool = True, **fields: Any) -> dict[str, Any]:
    resource = {"resourceType": "ServiceRequest", "id": sid, "status": "draft", "intent": "order", **fields}
    if imaging:
        resource["category"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}]
    return resource


def chosen(
    hook: str, context: HookContext, rec: PatientRecord, policy: StudyPolicy | None = None
) -> list[str]:
    svc = make_services(policy)[f"imaging-crosscheck-{hook}"] if policy else service(hook)
    return [s.study.id for s in svc.select_studies(context, rec, now=NOW)]


def test_patient_view_checks_the_most_recent_study() -> None:
    rec = record(study("is-1", 40), study("is-2", 3), study("is-3", 10), study("is-4", None))
    context = PatientViewContext(**USER)
    assert chosen("patient-view", context, rec) == ["is-2"]
    assert chosen("patient-view", context, rec, StudyPolicy(count=5, max_age=timedelta(days=30))) == [
        "is-2",
        "is-3",
    ]
    assert chosen("patient-view", context, record(study("is-1", 31))) == []
    selected = service("patient-view").select_studies(context, rec, now=NOW)[0]
    assert selected.study_instance_uid == "1.2.3.2" and "most recent" in selected.reason


def test_patient_view_skips_studies_that_cannot_be_checked() -> None:
    rec = record(
        study("is-1", 1, status="registered"),
        study("is-2", 2, study_instance_uid=None),
        study("is-3", 3, status="entered-in-error"),
        study("is-4", 4),
    )
    assert chosen("patient-view", PatientViewContext(**USER), rec) == ["is-4"]


def test_study_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        StudyPolicy(count=0)
    with pytest.raises(ValueError):
        StudyPolicy(max_age=timedelta(0))


def test_order_sign_checks_cited_studies() -> None:
    report = DiagnosticReport(id="dr-1", codes=(), imaging_study_ids=("is-1",))
    rec = record(study("is-1", 400), study("is-2", 300), study("is-3", 1), reports=(report,))
    drafts = bundle(
        order(
            supportingInfo=[{"reference": "ImagingStudy/is-2"}],
            reasonReference=[{"reference": "DiagnosticReport/dr-1"}],
        ),
        order(
            "sr-2", supportingInfo=[{"reference": "https://ehr.example/fhir/ImagingStudy/is-2/_history/3"}]
        ),
    )
    context = OrderSignContext(**USER, draftOrders=drafts)
    svc = service("order-sign")
    selected = svc.select_studies(context, rec, now=NOW)
    assert [(s.study.id, s.reason) for s in selected] == [
        ("is-2", "cited by ServiceRequest/sr-1 (supportingInfo)"),
        ("is-1", "cited by ServiceRequest/sr-1 (reasonReference)"),
    ]
    assert svc.cited_references(context) == ["ImagingStudy/is-2", "DiagnosticReport/dr-1"]


def test_order_sign_falls_back_to_the_most_recent_study_for_imaging_orders() -> None:
    rec = record(study("is-1", 20), study("is-2", 2))
    cites_unknown = bundle(order(supportingInfo=[{"reference": "ImagingStudy/elsewhere"}]))
    assert chosen("order-sign", OrderSignContext(**USER, draftOrders=cites_unknown), rec) == ["is-2"]
    medication = {"resourceType": "MedicationRequest", "id": "m", "status": "draft", "intent": "order"}
    not_imaging = bundle(medication, order(imaging=False))
    assert chosen("order-sign", OrderSignContext(**USER, draftOrders=not_imaging), rec) == []


def draft_report(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "id": "dr-9", "status": "preliminary", **fields}


def test_report_sign_checks_the_study_the_report_reads() -> None:
    rec = record(study("is-1", 10), study("is-2", 1))
    drafts = bundle(draft_report(imagingStudy=[{"reference": "ImagingStudy/is-1"}]))
    context = ReportSignContext(**USER, draftReports=drafts)
    selected = service("report-sign").select_studies(context, rec, now=NOW)
    assert [(s.study.id, s.reason) for s in selected] == [
        ("is-1", "cited by DiagnosticReport/dr-9 (imagingStudy)")
    ]


def test_report_sign_falls_back_to_the_study_of_its_order() -> None:
    rec = record(study("is-1", 10, based_on=("sr-5",)), study("is-2", 1))
    drafts = bundle(draft_report(basedOn=[{"reference": "ServiceRequest/sr-5"}]))
    assert chosen("report-sign", ReportSignContext(**USER, draftReports=drafts), rec) == ["is-1"]


def test_report_sign_falls_back_to_the_latest_study_before_the_report() -> None:
    rec = record(study("is-1", 10), study("is-2", 5), study("is-3", 1))
    when = (NOW - timedelta(days=4)).isoformat()
    drafts = bundle(draft_report(effectiveDateTime=when))
    assert chosen("report-sign", ReportSignContext(**USER, draftReports=drafts), rec) == ["is-2"]
    undated = bundle(draft_report())
    assert chosen("report-sign", ReportSignContext(**USER, draftReports=undated), rec) == ["is-3"]


def test_resource_id() -> None:
    assert resource_id({"reference": "ImagingStudy/a"}, "ImagingStudy") == "a"
    assert resource_id({"reference": "http://x/fhir/ImagingStudy/a/_history/2"}, "ImagingStudy") == "a"
    assert resource_id({"reference": "DiagnosticReport/a"}, "ImagingStudy") is None
    assert resource_id({"reference": "#contained"}, "ImagingStudy") is None
    assert resource_id("ImagingStudy/a", "ImagingStudy") is None


def test_report_sign_hook_follows_hook_conventions() -> None:
    assert re.fullmatch(r"[a-z]+-[a-z]+", REPORT_SIGN.name)  # noun-verb
    assert REPORT_SIGN.prefetch_tokens == ORDER_SIGN.prefetch_tokens
    assert REPORT_SIGN.drafts == "draftReports" and REPORT_SIGN.drafts_in_record
    assert not ORDER_SIGN.drafts_in_record
