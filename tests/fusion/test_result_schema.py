"""CrossCheckResult round-trips and matches its published JSON Schema."""

from __future__ import annotations

import jsonschema
import pytest

from fusion.result import (
    SCHEMA_VERSION,
    CaseRef,
    CrossCheckResult,
    Evidence,
    Finding,
    ModelInfo,
    Scores,
    Severity,
    load_schema,
)


def _result(**overrides: object) -> CrossCheckResult:
    base: dict[str, object] = dict(
        case=CaseRef(
            patient_id="pat-000001", study_instance_uid="1.2.826.0.1.3680043.10.1.5", accession_number="A1"
        ),
        scores=Scores(consistency=0.1, synthetic=0.02, overall=0.92),
        flagged=True,
        threshold=0.5,
        findings=(
            Finding(
                code="identity.birth-date-mismatch",
                severity=Severity.CRITICAL,
                message="DICOM PatientBirthDate differs from the FHIR Patient's birth date by 3 years",
                evidence=(
                    Evidence("fhir", "Patient/pat-000001"),
                    Evidence("dicom", "PatientBirthDate", uid="1.2.3"),
                ),
            ),
        ),
        model=ModelInfo(name="crosscheck-small", version="0.1.0", sha256="a" * 64),
        timings_ms={"total": 12.5},
    )
    base.update(overrides)
    return CrossCheckResult(**base)  # type: ignore[arg-type]


def test_json_validates_against_schema() -> None:
    jsonschema.validate(_result().to_json(), load_schema())


def test_round_trip() -> None:
    res = _result()
    again = CrossCheckResult.from_json(res.to_json())
    assert again == res
    assert again.schema_version == SCHEMA_VERSION


def test_schema_rejects_out_of_range_score() -> None:
    doc = _result().to_json()
    doc["scores"]["overall"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema())


def test_schema_rejects_bad_severity_and_code() -> None:
    doc = _result().to_json()
    doc["findings"][0]["severity"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema())
    doc = _result().to_json()
    doc["findings"][0]["code"] = "Not A Code"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema())


def test_scores_must_be_probabilities() -> None:
    with pytest.raises(ValueError, match="not a probability"):
        Scores(consistency=-0.1, synthetic=None, overall=0.5)


def test_severity_accepts_string_and_ranks() -> None:
    f = Finding(code="a.b", severity="warning", message="m")  # type: ignore[arg-type]
    assert f.severity is Severity.WARNING
    assert _result(findings=(f,)).worst_severity is Severity.WARNING
    assert Severity.CRITICAL.rank > Severity.WARNING.rank > Severity.INFO.rank
