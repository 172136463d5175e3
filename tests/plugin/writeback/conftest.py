"""Results and DICOM headers for the write-back unit tests, made here (no patient data)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity

STUDY_UID = "1.2.826.0.1.3680043.8.498.1000"
MODEL = ModelInfo("crosscheck-fusion-small", "0.2.0", "ab" * 32)

MakeResult = Callable[..., CrossCheckResult]


def _result(
    *,
    flagged: bool = True,
    consistency: float | None = 0.9,
    synthetic: float | None = 0.97,
    overall: float | None = None,
    findings: tuple[Finding, ...] | None = None,
    model: ModelInfo | None = MODEL,
    study: str = STUDY_UID,
    threshold: float = 0.5,
) -> CrossCheckResult:
    if findings is None:
        findings = (
            (
                Finding(
                    "model.synthetic",
                    Severity.CRITICAL,
                    "The pixels look synthetic or tampered (probability 0.97).",
                    (Evidence("value", "p_synthetic", 0.97),),
                ),
                Finding(
                    "dates.study-before-order",
                    Severity.WARNING,
                    "The study was acquired before it was ordered.",
                    (Evidence("fhir", "ServiceRequest/sr-1"), Evidence("dicom", "StudyDate")),
                ),
                Finding("device.known", Severity.INFO, "The acquisition device is known to the site."),
            )
            if flagged
            else ()
        )
    if overall is None:
        overall = 0.98 if flagged else 0.12
    return CrossCheckResult(
        case=CaseRef("pat-1", study, "ACC1"),
        scores=Scores(consistency=consistency, synthetic=synthetic, overall=overall),
        flagged=flagged,
        threshold=threshold,
        findings=findings,
        model=model,
    )


@pytest.fixture
def make_result() -> MakeResult:
    """``make_result(flagged=..., consistency=..., synthetic=..., findings=..., model=...)``."""
    return _result


def dx_header(
    *, study: str = STUDY_UID, rows: int = 512, columns: int = 512, frames: int | None = None, **extra: Any
) -> Dataset:
    """The header of a DX image (no pixel data: the write-back reads headers only)."""
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST-0001"
    ds.PatientName = "Test^Patient"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


@pytest.fixture
def make_header() -> Callable[..., Dataset]:
    """``make_header(rows=..., columns=..., study=..., frames=...)``: a DX image header."""
    return dx_header
