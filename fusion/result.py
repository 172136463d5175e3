"""What a cross-check returns: ``Finding`` and the versioned ``CrossCheckResult``.

``CrossCheckResult.to_json()`` produces the document described by
``fusion/schema/crosscheck-result.schema.json`` (``SCHEMA_VERSION``); every
consumer (CLI, REST, CDS Hooks cards, reports) serialises through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "CaseRef",
    "CrossCheckResult",
    "Evidence",
    "Finding",
    "ModelInfo",
    "Scores",
    "Severity",
    "load_schema",
]

SCHEMA_VERSION = "1.0"


class Severity(StrEnum):
    """How much a finding matters: ``critical`` findings flag a case on their own."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "critical": 2}[self.value]


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence behind a finding.

    ``kind`` is ``fhir`` (``reference`` is ``"Observation/123"``), ``dicom``
    (``reference`` is the keyword, e.g. ``"PatientBirthDate"``, optionally with
    the SOPInstanceUID in ``uid``) or ``value`` (a computed quantity).
    """

    kind: str
    reference: str
    value: Any = None
    uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "reference": self.reference}
        if self.value is not None:
            out["value"] = self.value
        if self.uid is not None:
            out["uid"] = self.uid
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        return cls(
            kind=data["kind"], reference=data["reference"], value=data.get("value"), uid=data.get("uid")
        )


@dataclass(frozen=True)
class Finding:
    """A reason to doubt (or trust) a case, with the evidence behind it.

    ``code`` is a stable machine name (``identity.birth-date-mismatch``); the
    ``message`` is what a clinician reads, without patient names or identifiers.
    """

    code: str
    severity: Severity
    message: str
    evidence: tuple[Evidence, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.severity, Severity):
            object.__setattr__(self, "severity", Severity(self.severity))

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "evidence": [e.to_json() for e in self.evidence],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=data["code"],
            severity=Severity(data["severity"]),
            message=data["message"],
            evidence=tuple(Evidence.from_json(e) for e in data.get("evidence", [])),
        )


@dataclass(frozen=True)
class Scores:
    """Calibrated probabilities; ``None`` when that part could not be scored.

    ``consistency``: the image is consistent with the record (``None`` without a
    record). ``synthetic``: the image is AI-generated or tampered. ``overall``:
    the case deserves review.
    """

    consistency: float | None
    synthetic: float | None
    overall: float

    def __post_init__(self) -> None:
        for name in ("consistency", "synthetic", "overall"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"score {name}={v} is not a probability")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class CaseRef:
    patient_id: str | None
    study_instance_uid: str
    accession_number: str | None = None


@dataclass(frozen=True)
class CrossCheckResult:
    """The answer for one case (see the module docstring for the JSON form)."""

    case: CaseRef
    scores: Scores
    flagged: bool
    threshold: float
    findings: tuple[Finding, ...]
    model: ModelInfo | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    contributions: tuple[dict[str, Any], ...] = ()
    schema_version: str = SCHEMA_VERSION

    @property
    def worst_severity(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "case": {
                "patient_id": self.case.patient_id,
                "study_instance_uid": self.case.study_instance_uid,
                "accession_number": self.case.accession_number,
            },
            "scores": {
                "consistency": self.scores.consistency,
                "synthetic": self.scores.synthetic,
                "overall": self.scores.overall,
            },
            "flagged": self.flagged,
            "threshold": self.threshold,
            "findings": [f.to_json() for f in self.findings],
            "contributions": list(self.contributions),
            "model": None
            if self.model is None
            else {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CrossCheckResult:
        model = data.get("model")
        return cls(
            schema_version=data["schema_version"],
            case=CaseRef(**data["case"]),
            scores=Scores(**data["scores"]),
            flagged=bool(data["flagged"]),
            threshold=float(data["threshold"]),
            findings=tuple(Finding.from_json(f) for f in data.get("findings", [])),
            contributions=tuple(data.get("contributions", [])),
            model=None if model is None else ModelInfo(**model),
            timings_ms=dict(data.get("timings_ms", {})),
        )


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``CrossCheckResult.to_json()``."""
    text = resources.files("fusion").joinpath("schema/crosscheck-result.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
