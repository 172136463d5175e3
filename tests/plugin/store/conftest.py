"""Stores on temporary SQLite files, a clock the tests move, and results to save."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity
from plugin.store import Store

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SHA_A = "a" * 64


class Clock:
    """A clock that advances one second each time it is read, unless set."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        current = self.now
        self.now += timedelta(seconds=1)
        return current


def _make_result(
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    *,
    sha256: str | None = SHA_A,
    overall: float = 0.82,
    flagged: bool = True,
    patient_id: str | None = "pat-1",
    accession: str | None = "ACC-1",
) -> CrossCheckResult:
    return CrossCheckResult(
        case=CaseRef(patient_id=patient_id, study_instance_uid=study_uid, accession_number=accession),
        scores=Scores(consistency=0.25, synthetic=0.7, overall=overall),
        flagged=flagged,
        threshold=0.5,
        findings=(
            Finding(
                code="identity.birth-date-mismatch",
                severity=Severity.CRITICAL,
                message="The image's birth date differs from the record's.",
                evidence=(
                    Evidence("fhir", "Patient/pat-1"),
                    Evidence("dicom", "PatientBirthDate", uid="1.2.3"),
                ),
            ),
        ),
        model=None if sha256 is None else ModelInfo(name="fusion-default", version="0.2.0", sha256=sha256),
        timings_ms={"total": 12.5},
        contributions=({"item": "Observation/1", "weight": -0.3},),
    )


MakeResult = Callable[..., CrossCheckResult]


@pytest.fixture
def make_result() -> MakeResult:
    """``make_result(study_uid, *, sha256="a"*64, overall, flagged, patient_id, accession)``."""
    return _make_result


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "crosscheck.db"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(db_path, clock=clock) as opened:
        yield opened
