"""A ``CrossCheckResult`` as FHIR: a ``DetectedIssue`` for a flagged study, a ``RiskAssessment``
for any scored one, and their idempotent write to the FHIR server.

    issue = detected_issue(result, patient_reference="Patient/123",
                           imaging_study_reference="ImagingStudy/456",
                           review_url="https://crosscheck.example.org/review/abc")
    async with FhirClient(base, credentials=...) as fhir:
        ref = await write_detected_issue(fhir, issue)           # "DetectedIssue/..."

Both resources are built as FHIR R4 JSON and validated with ``fhir.resources.R4B``
before anything is sent. The algorithm that made the result (model name, version,
sha256 of its weights) is a contained ``Device``: the DetectedIssue's ``author``, the
RiskAssessment's ``performer``. Each resource carries an ``identifier`` derived from
the StudyInstanceUID and the model's sha256 (`resource_identifier`), so writing the
same result twice leaves one resource on the server, by either `WriteMode`:

- ``conditional-create``: ``POST [type]`` with ``If-None-Exist: identifier=...``; the
  server keeps the first one. Needs the server to search the type by ``identifier``
  (HAPI, Firely, Azure and Google do).
- ``update-as-create``: ``PUT [type]/[id]`` with a logical id derived from the same
  identifier; the server keeps the latest one. Needs the server to let clients choose
  ids (``CapabilityStatement.rest.resource.updateCreate``). sekmet-fhir, which does
  not search DetectedIssue or RiskAssessment by ``identifier``, takes this one.

Refusals by the server are the connectors' ``ServerError`` hierarchy; a result that
cannot be written is `UnsuitableResult`; a resource we built that does not validate
is `InvalidWriteBack` (a bug).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.riskassessment import RiskAssessment

from connectors.errors import FhirResourceInvalid
from connectors.fhir.extract import validate_resource
from connectors.fhir.rest import FhirClient
from fusion.result import CrossCheckResult, Finding, ModelInfo, Severity
from plugin.errors import InvalidWriteBack, UnsuitableResult
from plugin.writeback.algorithm import algorithm_of, describe
from plugin.writeback.codes import (
    ALGORITHM_SYSTEM,
    FINDING_SYSTEM,
    IDENTIFIER_SYSTEM,
    ISSUE_SYSTEM,
    MANUFACTURER,
    MODEL_SHA256_SYSTEM,
    NAMESPACE,
    IssueCode,
)

__all__ = [
    "WriteMode",
    "detected_issue",
    "resource_identifier",
    "risk_assessment",
    "write_detected_issue",
    "write_risk_assessment",
]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Resource = TypeVar("Resource", DetectedIssue, RiskAssessment)

#: DetectedIssue.severity from the worst finding's severity
_SEVERITY = {Severity.CRITICAL: "high", Severity.WARNING: "moderate", Severity.INFO: "low"}
#: rule-based findings that say the image belongs to another patient, order or time
_RECORD_MISMATCH_PREFIXES = ("identity.", "order.", "dates.")
_DEVICE_ID = "algorithm"  # the contained Device's local id
_ID = r"[A-Za-z0-9\-.]{1,64}"  # FHIR id


class WriteMode(StrEnum):
    """How a resource is written so that writing it twice leaves one (see the module docstring)."""

    CONDITIONAL_CREATE = "conditional-create"
    UPDATE_AS_CREATE = "update-as-create"


def resource_identifier(result: CrossCheckResult, resource_type: str) -> JSON:
    """The ``Identifier`` of the ``resource_type`` written for ``result``.

    A ``urn:uuid:`` (UUID version 5) of the resource type, the StudyInstanceUID and
    the sha256 of the model's weights: the same study scored by the same model gets
    the same identifier; another model's result is another resource.
    """
    model = algorithm_of(result)
    name = f"{NAMESPACE}/{resource_type}/{result.case.study_instance_uid}/{model.sha256}"
    return {"system": IDENTIFIER_SYSTEM, "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"}


def detected_issue(
    result: CrossCheckResult,
    *,
    patient_reference: str,
    imaging_study_reference: str,
    review_url: str | None = None,
    identified: datetime | None = None,
) -> DetectedIssue:
    """A ``DetectedIssue`` for a flagged study (`UnsuitableResult` for one that was not flagged).

    ``status`` final; ``severity`` from the worst finding (critical: high, warning:
    moderate, otherwise low); ``code`` what is wrong (`IssueCode`); ``patient`` and
    ``implicated`` (the ImagingStudy) from the references given (``Patient/[id]``,
    ``ImagingStudy/[id]``, relative or absolute); ``detail`` one sentence; ``evidence``
    one entry per finding that is not info, naming the FHIR resources behind it;
    ``identifiedDateTime`` (default now); ``reference`` the review page, when given.
    """
    if not result.flagged:
        raise UnsuitableResult(
            f"study {result.case.study_instance_uid} was not flagged (score {result.scores.overall:.2f} "
            f"< threshold {result.threshold:.2f}); a DetectedIssue is only written for flagged studies: "
            "write a RiskAssessment or the Structured Report for it instead"
        )
    patient = _reference(patient_reference, "Patient", "patient_reference")
    study = _reference(imaging_study_reference, "ImagingStudy", "imaging_study_reference")
    model = algorithm_of(result)
    code = _issue_code(result)
    worst = result.worst_severity
    data: JSON = {
        "resourceType": "DetectedIssue",
        "contained": [_device(model)],
        "identifier": [resource_identifier(result, "DetectedIssue")],
        "status": "final",
        "code": _concept(ISSUE_SYSTEM, code.value, code.display),
        "severity": _SEVERITY[worst] if worst is not None else "low",
        "patient": {"reference": patient},
        "identifiedDateTime": _instant(identified, "identified"),
        "author": {"reference": f"#{_DEVICE_ID}", "display": describe(model)},
        "implicated": [{"reference": study}],
        "detail": _detail(result),
        "evidence": [_evidence(f) for f in _ranked(result.findings) if f.severity is not Severity.INFO],
    }
    if review_url is not None:
        data["reference"] = _url(review_url)
    if not data["evidence"]:
        del data["evidence"]
    return _validated(DetectedIssue, data)


def risk_assessment(
    result: CrossCheckResult,
    *,
    patient_reference: str,
    imaging_study_reference: str,
    occurrence: datetime | None = None,
) -> RiskAssessment:
    """A ``RiskAssessment`` of a scored study, flagged or not.

    ``prediction``: the calibrated probabilities that the image is inconsistent with
    the record (``1 - consistency``) and that it is synthetic or tampered, each
    ``probabilityDecimal``, those the model could score; ``basis`` the ImagingStudy;
    ``method`` and ``performer`` the algorithm; ``occurrenceDateTime`` (default now).
    `UnsuitableResult` when the model scored neither (no decodable pixels).
    """
    patient = _reference(patient_reference, "Patient", "patient_reference")
    study = _reference(imaging_study_reference, "ImagingStudy", "imaging_study_reference")
    model = algorithm_of(result)
    scores = result.scores
    predictions = []
    if scores.consistency is not None:
        predictions.append(_prediction(IssueCode.IMAGE_RECORD_MISMATCH, 1.0 - scores.consistency))
    if scores.synthetic is not None:
        predictions.append(_prediction(IssueCode.SYNTHETIC_IMAGE, scores.synthetic))
    if not predictions:
        raise UnsuitableResult(
            f"study {result.case.study_instance_uid} has no model probability to assess (the image "
            "could not be scored); a RiskAssessment needs at least one: write a DetectedIssue or the "
            "Structured Report with its findings instead"
        )
    code = IssueCode.INTEGRITY_ASSESSMENT
    verdict = "flagged for review" if result.flagged else "not flagged"
    data: JSON = {
        "resourceType": "RiskAssessment",
        "contained": [_device(model)],
        "identifier": [resource_identifier(result, "RiskAssessment")],
        "status": "final",
        "method": {
            "coding": [{"system": ALGORITHM_SYSTEM, "code": model.name, "display": model.name}],
            "text": describe(model),
        },
        "code": _concept(ISSUE_SYSTEM, code.value, code.display),
        "subject": {"reference": patient},
        "occurrenceDateTime": _instant(occurrence, "occurrence"),
        "performer": {"reference": f"#{_DEVICE_ID}", "display": describe(model)},
        "basis": [{"reference": study}],
        "prediction": predictions,
        "note": [
            {
                "text": f"Imaging study {verdict} by image cross-check (score {scores.overall:.2f}, "
                f"threshold {result.threshold:.2f})."
            }
        ],
    }
    return _validated(RiskAssessment, data)


async def write_detected_issue(
    client: FhirClient, resource: DetectedIssue, *, mode: WriteMode | str = WriteMode.CONDITIONAL_CREATE
) -> str:
    """Write a DetectedIssue made by `detected_issue` once; its reference (``DetectedIssue/[id]``)."""
    return await _write(client, resource, "DetectedIssue", WriteMode(mode))


async def write_risk_assessment(
    client: FhirClient, resource: RiskAssessment, *, mode: WriteMode | str = WriteMode.CONDITIONAL_CREATE
) -> str:
    """Write a RiskAssessment made by `risk_assessment` once; its reference (``RiskAssessment/[id]``)."""
    return await _write(client, resource, "RiskAssessment", WriteMode(mode))


# -- writing --------------------------------------------------------------------------------------


async def _write(
    client: FhirClient, resource: DetectedIssue | RiskAssessment, kind: str, mode: WriteMode
) -> str:
    data: JSON = resource.model_dump(mode="json")
    if data.get("resourceType") != kind:
        raise UnsuitableResult(f"expected a {kind} to write, got a {data.get('resourceType')}")
    ours = [
        i for i in data.get("identifier") or () if i.get("system") == IDENTIFIER_SYSTEM and i.get("value")
    ]
    if not ours:
        raise UnsuitableResult(
            f"this {kind} has no {IDENTIFIER_SYSTEM} identifier, so writing it twice would make two: "
            f"build it with {'detected_issue' if kind == 'DetectedIssue' else 'risk_assessment'}()"
        )
    identifier = ours[0]
    if mode is WriteMode.CONDITIONAL_CREATE:
        data.pop("id", None)
        written = await client.create(
            data, if_none_exist={"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
    else:
        data["id"] = str(identifier["value"]).removeprefix("urn:uuid:")
        written = await client.update(data)
    logger.debug("%s %s (%s)", "created" if written.created else "existing", written.reference, mode.value)
    return written.reference


# -- building -------------------------------------------------------------------------------------


def _validated(model: type[Resource], data: JSON) -> Resource:
    try:
        validate_resource(data)  # R4B models and the required bindings they leave out; names no values
    except FhirResourceInvalid as exc:
        raise InvalidWriteBack(model.__name__, exc.reason) from exc
    return model.model_validate(data)


def _device(model: ModelInfo) -> JSON:
    return {
        "resourceType": "Device",
        "id": _DEVICE_ID,
        "identifier": [{"system": MODEL_SHA256_SYSTEM, "value": model.sha256}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "type": {"text": "Image cross-check algorithm (software)"},
        "version": [{"value": model.version}],
    }


def _reference(value: str, resource_type: str, argument: str) -> str:
    pattern = rf"(?:https?://\S+/)?{resource_type}/{_ID}"
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise UnsuitableResult(
            f"{argument} must be a reference to a {resource_type}: '{resource_type}/[id]', relative or "
            "absolute, with an id of at most 64 letters, digits, '-' and '.'"
        )
    return value


def _url(value: str) -> str:
    if not re.fullmatch(r"https?://\S+", value):
        raise UnsuitableResult("review_url must be an absolute http(s) URL of the review page")
    return value


def _instant(value: datetime | None, argument: str) -> str:
    value = value or datetime.now(UTC)
    if value.tzinfo is None:
        raise UnsuitableResult(
            f"{argument} must be a timezone-aware datetime (FHIR dateTime needs the offset)"
        )
    return value.isoformat(timespec="seconds")


def _concept(system: str, code: str, display: str) -> JSON:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _ranked(findings: tuple[Finding, ...]) -> list[Finding]:
    return sorted(findings, key=lambda f: -f.severity.rank)  # stable: ties keep the result's order


def _issue_code(result: CrossCheckResult) -> IssueCode:
    """What the issue is: the model head over the threshold, else what the worst finding says."""
    s = result.scores
    p_synthetic = s.synthetic if s.synthetic is not None else 0.0
    p_inconsistent = 1.0 - s.consistency if s.consistency is not None else 0.0
    if p_synthetic >= result.threshold and p_synthetic >= p_inconsistent:
        return IssueCode.SYNTHETIC_IMAGE
    if p_inconsistent >= result.threshold:
        return IssueCode.IMAGE_RECORD_MISMATCH
    ranked = _ranked(result.findings)
    if (
        ranked
        and ranked[0].severity is not Severity.INFO
        and ranked[0].code.startswith(_RECORD_MISMATCH_PREFIXES)
    ):
        return IssueCode.IMAGE_RECORD_MISMATCH
    return IssueCode.FLAGGED_FOR_REVIEW


def _detail(result: CrossCheckResult) -> str:
    head = (
        f"Imaging study flagged for review by image cross-check (score {result.scores.overall:.2f}, "
        f"threshold {result.threshold:.2f})"
    )
    ranked = [f for f in _ranked(result.findings) if f.severity is not Severity.INFO]
    if not ranked:
        return head + ": the model's combined probability is over the threshold."
    return f"{head}: {ranked[0].message.rstrip('.')}."


def _evidence(finding: Finding) -> JSON:
    # the message goes in text: it is this case's, not the name of the concept (a coding's display)
    evidence: JSON = {
        "code": [{"coding": [{"system": FINDING_SYSTEM, "code": finding.code}], "text": finding.message}]
    }
    details = [
        {"reference": e.reference}
        for e in finding.evidence
        if e.kind == "fhir" and re.fullmatch(rf"[A-Z][A-Za-z]+/{_ID}", e.reference)
    ]
    if details:
        evidence["detail"] = details
    return evidence


def _prediction(code: IssueCode, probability: float) -> JSON:
    return {
        "outcome": _concept(ISSUE_SYSTEM, code.value, code.display),
        "probabilityDecimal": round(probability, 4),
    }
