"""The CDS Services: ``patient-view``, ``order-sign`` (imaging orders), the draft ``report-sign``.

Each `CdsService` has its discovery entry (id, title, description, prefetch templates) and
knows which ImagingStudy a call checks (`CdsService.select_studies`):

- ``patient-view``: the patient's most recent ImagingStudies, `StudyPolicy.count` of them
  (default 1) started within `StudyPolicy.max_age` (default 30 days) of the call.
- ``order-sign``: the ImagingStudies the ServiceRequests in ``draftOrders`` cite, directly or
  through a DiagnosticReport's ``imagingStudy``, in ``supportingInfo`` or ``reasonReference``;
  when they cite none that can be found and one of them is an imaging order, the patient's
  most recent study as for ``patient-view``; drafts with no imaging order and no citation
  (medications, labs) check nothing.
- ``report-sign``: the ImagingStudies the DiagnosticReport being signed names in
  ``imagingStudy``; else those whose ``basedOn`` is one of the report's ``basedOn`` orders (the
  study done for the order the report answers); else the patient's most recent study started
  at or before the report's ``effective[x]`` (or ``issued``, or now), within ``max_age`` of it.
  The card says which study was checked.

Only studies with a StudyInstanceUID and a status other than ``registered``, ``cancelled`` or
``entered-in-error`` are checked.

All three services ask for the same prefetch (`RECORD_PREFETCH`): the record the cross-check
reads, within the specification's recommended query subset (reads, ``patient=`` searches,
token equality, ``_sort``, ``_count``); ``_count`` bounds "recent" searches to one page.
Compared with `connectors.fhir.fetch.PATIENT_SEARCHES` it leaves out MedicationStatement and
the patient's Devices, which EHR servers often do not offer, and ``_include`` of Endpoints,
which is outside that subset (Endpoints and modality Devices are read when ``fhirServer``
is given).

The ``report-sign`` hook (hookVersion 0.1, hookMaturity 0 - Draft, specificationVersion 2.0)
-------------------------------------------------------------------------------------------
Workflow: fires when a clinician (a radiologist) is about to sign one or more DiagnosticReports,
before they leave a preliminary status; a service can warn that the images the report reads
may not belong to the patient or may be synthetic or edited.

| Field | Optionality | Prefetch Token | Type | Description |
|---|---|---|---|---|
| ``userId`` | REQUIRED | Yes | string | ``Practitioner/[id]`` or ``PractitionerRole/[id]`` signing |
| ``patientId`` | REQUIRED | Yes | string | the FHIR Patient.id of the report's subject |
| ``encounterId`` | OPTIONAL | Yes | string | the FHIR Encounter.id in context |
| ``draftReports`` | REQUIRED | No | object | a FHIR R4 Bundle of the DiagnosticReport(s) being signed |

The names follow ``order-sign`` (``draftOrders``). The hook is not in the CDS Hooks Library; if
it stays specific to this project, the specification asks for a reverse-domain name
(``REPORT_SIGN.name`` is the one place to change it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.domain import ImagingStudyRecord, PatientRecord
from connectors.fhir.extract import is_imaging_order, parse_fhir_datetime
from plugin.cds.models import (
    CdsRequest,
    Discovery,
    HookContext,
    OrderSignContext,
    PatientViewContext,
    ReportSignContext,
    Service,
    parse_context,
)
from plugin.cds.tokens import check_template
from plugin.errors import CdsRequestInvalid, FieldProblem, UnknownCdsService

__all__ = [
    "DEFAULT_POLICY",
    "ORDER_SIGN",
    "PATIENT_VIEW",
    "RECORD_PREFETCH",
    "REPORT_SIGN",
    "SERVICES",
    "CdsService",
    "Hook",
    "SelectedStudy",
    "StudyPolicy",
    "discovery",
    "find_service",
    "make_services",
    "resource_id",
]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True)
class Hook:
    """A hook as its definition gives it: name, context model, and context fields usable as tokens.

    ``drafts`` names the context field holding a Bundle of the resources being worked on
    (``draftOrders``); ``drafts_in_record`` says whether they are part of the patient's record
    for the cross-check (the report being signed is; orders about to be signed are not).
    """

    name: str
    context: type[HookContext]
    prefetch_tokens: frozenset[str]
    drafts: str | None = None
    drafts_in_record: bool = False


_USER_PATIENT_ENCOUNTER = frozenset({"userId", "patientId", "encounterId"})
PATIENT_VIEW = Hook("patient-view", PatientViewContext, _USER_PATIENT_ENCOUNTER)
ORDER_SIGN = Hook("order-sign", OrderSignContext, _USER_PATIENT_ENCOUNTER, drafts="draftOrders")
REPORT_SIGN = Hook(
    "report-sign", ReportSignContext, _USER_PATIENT_ENCOUNTER, drafts="draftReports", drafts_in_record=True
)

_PATIENT = "{{context.patientId}}"
RECORD_PREFETCH: Mapping[str, str] = {
    "patient": f"Patient/{_PATIENT}",
    "imagingStudies": f"ImagingStudy?patient={_PATIENT}&_sort=-started&_count=20",
    "diagnosticReports": f"DiagnosticReport?patient={_PATIENT}&_sort=-date&_count=50",
    "serviceRequests": f"ServiceRequest?patient={_PATIENT}&_sort=-authored&_count=50",
    "laboratory": f"Observation?patient={_PATIENT}&category=laboratory&_sort=-date&_count=200",
    "vitalSigns": f"Observation?patient={_PATIENT}&category=vital-signs&_sort=-date&_count=50",
    "conditions": f"Condition?patient={_PATIENT}",
    "medicationRequests": f"MedicationRequest?patient={_PATIENT}",
    "procedures": f"Procedure?patient={_PATIENT}&_sort=-date&_count=100",
    "encounters": f"Encounter?patient={_PATIENT}&_sort=-date&_count=50",
}
"""Prefetch key -> template: the record a cross-check reads (``patient`` is always needed)."""

_UNCHECKABLE = frozenset({"registered", "cancelled", "entered-in-error"})


@dataclass(frozen=True)
class StudyPolicy:
    """Which of a patient's ImagingStudies are "the most recent": the ``count`` newest by
    ``started``, started no longer than ``max_age`` before the reference time (the call, or the
    report for ``report-sign``). Studies without ``started`` are never "most recent"."""

    count: int = 1
    max_age: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"StudyPolicy.count must be at least 1, not {self.count}")
        if self.max_age <= timedelta(0):
            raise ValueError("StudyPolicy.max_age must be positive")


DEFAULT_POLICY = StudyPolicy()
"""One study, started within the last 30 days."""


@dataclass(frozen=True)
class SelectedStudy:
    """An ImagingStudy a hook call checks, and why (``cited by ServiceRequest/sr-1 (supportingInfo)``)."""

    study: ImagingStudyRecord
    reason: str

    @property
    def study_instance_uid(self) -> str:
        assert self.study.study_instance_uid is not None  # selection keeps only studies with one
        return self.study.study_instance_uid


@dataclass(frozen=True)
class CdsService:
    """One CDS Service: its discovery entry, and the study selection of its hook."""

    id: str
    hook: Hook
    title: str
    description: str
    prefetch: Mapping[str, str] = field(default_factory=lambda: dict(RECORD_PREFETCH))
    usage_requirements: str | None = None
    policy: StudyPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if "patient" not in self.prefetch:
            raise ValueError(f"CDS Service {self.id}: the prefetch needs a 'patient' key")
        for key, template in self.prefetch.items():
            try:
                check_template(template, self.hook.prefetch_tokens)
            except ValueError as exc:
                raise ValueError(f"CDS Service {self.id}, prefetch key {key!r}: {exc}") from exc

    def discovery(self) -> Service:
        """This service's entry in the discovery response."""
        return Service(
            hook=self.hook.name,
            title=self.title,
            description=self.description,
            id=self.id,
            prefetch=dict(self.prefetch),
            usageRequirements=self.usage_requirements,
        )

    def parse_context(self, request: CdsRequest) -> HookContext:
        """The request's ``context`` as this hook defines it; `CdsRequestInvalid` otherwise."""
        if request.hook != self.hook.name:
            raise CdsRequestInvalid(
                f"CDS Service {self.id} serves the hook {self.hook.name}",
                [FieldProblem("hook", f"must be {self.hook.name!r} for this service")],
            )
        return parse_context(self.hook.context, request.context)

    def draft_resources(self, context: HookContext) -> list[JSON]:
        """The resources of the context's drafts Bundle (``draftOrders``), in Bundle order."""
        if self.hook.drafts is None:
            return []
        bundle = getattr(context, self.hook.drafts)
        return [entry["resource"] for entry in bundle["entry"]]

    def cited_references(self, context: HookContext) -> list[str]:
        """``ImagingStudy/x`` and ``DiagnosticReport/y`` the drafts cite (read when not prefetched)."""
        found: dict[str, None] = {}
        for _, _, ref in self._citations(context):
            found.setdefault(ref, None)
        return list(found)

    def select_studies(
        self, context: HookContext, record: PatientRecord, *, now: datetime | None = None
    ) -> tuple[SelectedStudy, ...]:
        """The studies this call checks (see the module docstring), at most once each."""
        now = now or datetime.now(UTC)
        studies = {s.id: s for s in record.imaging_studies if _checkable(s)}
        chosen: dict[str, SelectedStudy] = {}
        for source, element, ref in self._citations(context):
            rtype, _, rid = ref.partition("/")
            ids = [rid] if rtype == "ImagingStudy" else _report_studies(record, rid)
            for sid in ids:
                if sid in studies and sid not in chosen:
                    chosen[sid] = SelectedStudy(studies[sid], f"cited by {source} ({element})")
        if chosen:
            return tuple(chosen.values())
        if self.hook.name == REPORT_SIGN.name:
            return self._report_fallback(context, record, studies, now)
        if self.hook.name == ORDER_SIGN.name and not any(
            r.get("resourceType") == "ServiceRequest" and is_imaging_order(r)
            for r in self.draft_resources(context)
        ):
            return ()
        return _most_recent(studies.values(), self.policy, now, "the patient's most recent study")

    # -- hook by hook ----------------------------------------------------------------------------

    def _citations(self, context: HookContext) -> Iterator[tuple[str, str, str]]:
        """(citing resource, element, ``ImagingStudy/x`` or ``DiagnosticReport/y``) of the drafts."""
        if self.hook.name not in _CITATIONS:
            return
        wanted, elements, targets = _CITATIONS[self.hook.name]
        for n, resource in enumerate(self.draft_resources(context)):
            if resource.get("resourceType") != wanted:
                continue
            source = f"{wanted}/{resource.get('id') or f'draft-{n}'}"
            for element in elements:
                for reference in _list(resource.get(element)):
                    for rtype in targets:
                        rid = resource_id(reference, rtype)
                        if rid is not None:
                            yield source, element, f"{rtype}/{rid}"

    def _report_fallback(
        self,
        context: HookContext,
        record: PatientRecord,
        studies: Mapping[str, ImagingStudyRecord],
        now: datetime,
    ) -> tuple[SelectedStudy, ...]:
        reports = [r for r in self.draft_resources(context) if r.get("resourceType") == "DiagnosticReport"]
        orders = {
            rid
            for r in reports
            for ref in _list(r.get("basedOn"))
            if (rid := resource_id(ref, "ServiceRequest"))
        }
        done = [s for s in studies.values() if orders.intersection(s.based_on)]
        if done:
            return tuple(SelectedStudy(s, "performed for the order the report answers") for s in done)
        when = min((t for r in reports if (t := _report_time(r)) is not None), default=now)
        return _most_recent(
            studies.values(), self.policy, when, "the patient's most recent study before the report"
        )


#: hook -> (draft resource type, its citing elements, the cited types)
_CITATIONS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    ORDER_SIGN.name: (
        "ServiceRequest",
        ("supportingInfo", "reasonReference"),
        ("ImagingStudy", "DiagnosticReport"),
    ),
    REPORT_SIGN.name: ("DiagnosticReport", ("imagingStudy",), ("ImagingStudy",)),
}


def resource_id(reference: Any, resource_type: str) -> str | None:
    """The id in a Reference to ``resource_type``: ``ImagingStudy/1``, or an absolute URL ending in it."""
    ref = reference.get("reference") if isinstance(reference, Mapping) else None
    if not isinstance(ref, str) or ref.startswith(("#", "urn:")):
        return None
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _checkable(study: ImagingStudyRecord) -> bool:
    return bool(study.study_instance_uid) and study.status not in _UNCHECKABLE


def _report_studies(record: PatientRecord, report_id: str) -> tuple[str, ...]:
    return next((r.imaging_study_ids for r in record.reports if r.id == report_id), ())


def _report_time(report: Mapping[str, Any]) -> datetime | None:
    period = report.get("effectivePeriod") if isinstance(report.get("effectivePeriod"), Mapping) else {}
    return (
        parse_fhir_datetime(report.get("effectiveDateTime"))
        or parse_fhir_datetime((period or {}).get("end"))
        or parse_fhir_datetime(report.get("issued"))
    )


def _most_recent(
    studies: Iterable[ImagingStudyRecord], policy: StudyPolicy, when: datetime, reason: str
) -> tuple[SelectedStudy, ...]:
    recent = [s for s in studies if s.started is not None and when - policy.max_age <= s.started <= when]
    recent.sort(key=lambda s: s.started or when, reverse=True)
    return tuple(SelectedStudy(s, reason) for s in recent[: policy.count])


def make_services(policy: StudyPolicy = DEFAULT_POLICY) -> dict[str, CdsService]:
    """The three services by id, choosing "most recent" studies with ``policy``."""
    usage = (
        "Answers from results scored when the study arrived; give fhirServer and fhirAuthorization "
        "(or every prefetch key) so that a study not yet scored can be checked on demand."
    )
    services = (
        CdsService(
            id="imaging-crosscheck-patient-view",
            hook=PATIENT_VIEW,
            title="Imaging cross-check on chart open",
            description=(
                "Checks the patient's most recent imaging study against the rest of the record and "
                "warns when the image may belong to another patient or look synthetic or edited."
            ),
            usage_requirements=usage,
            policy=policy,
        ),
        CdsService(
            id="imaging-crosscheck-order-sign",
            hook=ORDER_SIGN,
            title="Imaging cross-check of the studies an imaging order relies on",
            description=(
                "When imaging orders are signed, checks the prior studies they cite (or the patient's "
                "most recent study) for consistency with the record and signs of synthesis or editing."
            ),
            usage_requirements=usage,
            policy=policy,
        ),
        CdsService(
            id="imaging-crosscheck-report-sign",
            hook=REPORT_SIGN,
            title="Imaging cross-check before a report is signed",
            description=(
                "When a radiology report is signed (draft report-sign hook), checks the imaging study "
                "it reads for consistency with the patient's record and signs of synthesis or editing."
            ),
            usage_requirements=usage,
            policy=policy,
        ),
    )
    return {s.id: s for s in services}


SERVICES: Mapping[str, CdsService] = make_services()
"""The services with the default `StudyPolicy`, by id."""


def discovery(services: Iterable[CdsService] | None = None) -> Discovery:
    """The discovery response (``GET {baseUrl}/cds-services``) of ``services`` (default `SERVICES`)."""
    return Discovery(services=[s.discovery() for s in (SERVICES.values() if services is None else services)])


def find_service(service_id: str, services: Mapping[str, CdsService] = SERVICES) -> CdsService:
    """The service called ``service_id``; `UnknownCdsService` (404) when there is none."""
    try:
        return services[service_id]
    except KeyError:
        raise UnknownCdsService(
            f"no CDS Service {service_id!r}; GET /cds-services lists the services"
        ) from None
