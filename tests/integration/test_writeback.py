"""Write-back against the real servers: DetectedIssue and RiskAssessment to sekmet-fhir, the
Structured Report to Orthanc by STOW-RS, each read back from the server that holds it.

The result is the real model's, for a DX study of the fixture cohort (scored on the CPU).
What these tests write is deleted again at the end of the module, so the session's
servers hold the cohort as loaded for the other tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.riskassessment import RiskAssessment
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from connectors import link_cases, read_bundle, read_dicom
from connectors.auth import Credentials
from connectors.dicom.web import DicomWebSource
from connectors.errors import RequestRejected
from connectors.fhir.rest import FhirClient
from fusion.result import CrossCheckResult, Evidence, Finding, Scores, Severity
from fusion.scorer import Prediction, Scorer
from plugin.writeback import (
    TamperHeatmap,
    WriteMode,
    detected_issue,
    risk_assessment,
    store_structured_report,
    structured_report,
    write_detected_issue,
    write_risk_assessment,
)
from plugin.writeback.codes import (
    IMAGE_CONSISTENT_WITH_RECORD,
    REVIEW_RECOMMENDED,
    SYNTHETIC_OR_TAMPERED,
    TAMPER_REGION,
)

pytestmark = pytest.mark.integration

YES, NO = "373066001", "373067005"


@dataclasses.dataclass(frozen=True)
class Scored:
    patient_id: str
    imaging_study_id: str
    study_uid: str
    result: CrossCheckResult
    prediction: Prediction


@pytest.fixture(scope="module")
def scored(loaded: Path) -> Scored:
    """The last DX study of the cohort, scored by the default model (its FHIR ids from the Bundle)."""
    cases = json.loads((loaded / "manifest.json").read_text())["cases"]
    case = next(c for c in reversed(cases) if c["kind"].endswith("-dx"))
    uid = case["study_instance_uid"]
    bundle = json.loads((loaded / case["bundle"]).read_text())
    (study_id,) = [
        e["resource"]["id"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        and any(i.get("value") == f"urn:oid:{uid}" for i in e["resource"].get("identifier", []))
    ]
    linked = [c for c in link_cases(read_dicom(loaded / case["dicom"]), read_bundle(loaded / case["bundle"]))]
    (target,) = [c for c in linked if c.study_instance_uid == uid]
    ((result, prediction),) = Scorer(device="cpu").explain_many([target])
    return Scored(case["patient_id"], study_id, uid, result, prediction)


def _flagged(result: CrossCheckResult) -> CrossCheckResult:
    """The same study as if the model had found it synthetic (the cohort study itself may be clean),
    at a threshold of its own (the shipped model's threshold changes with each release)."""
    return dataclasses.replace(
        result,
        scores=Scores(consistency=result.scores.consistency, synthetic=0.97, overall=0.98),
        threshold=0.9,
        flagged=True,
        findings=(
            Finding("model.synthetic", Severity.CRITICAL, "The pixels look generated or edited."),
            Finding(
                "identity.birth-date-mismatch",
                Severity.WARNING,
                "The image's birth date differs from the record's.",
                (
                    Evidence("fhir", f"Patient/{result.case.patient_id}"),
                    Evidence("dicom", "PatientBirthDate"),
                ),
            ),
        ),
    )


# -- FHIR -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fhir_written(sekmet) -> Iterator[list[str]]:
    """References written by the tests below; deleted from sekmet when the module is done."""
    written: list[str] = []
    yield written
    for reference in set(written):
        httpx.delete(f"{sekmet.url}/{reference}", auth=sekmet.user, timeout=10).raise_for_status()


def _fhir(sekmet) -> FhirClient:
    return FhirClient(sekmet.url, credentials=Credentials(username=sekmet.user[0], password=sekmet.user[1]))


async def _ours(fhir: FhirClient, resource_type: str, identifier: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of the type carrying the identifier (sekmet cannot search these types by it)."""
    return [
        r
        for r in await fhir.search_all(resource_type, {"_count": 500})
        if identifier in (r.get("identifier") or [])
    ]


@pytest.mark.parametrize("kind", ["DetectedIssue", "RiskAssessment"])
def test_written_twice_read_back_once(scored: Scored, sekmet, fhir_written: list[str], kind: str) -> None:
    refs = {
        "patient_reference": f"Patient/{scored.patient_id}",
        "imaging_study_reference": f"ImagingStudy/{scored.imaging_study_id}",
    }
    if kind == "DetectedIssue":
        resource: Any = detected_issue(
            _flagged(scored.result), **refs, review_url="https://crosscheck.example.org/review/1"
        )
        write: Any = write_detected_issue
    else:
        resource, write = risk_assessment(scored.result, **refs), write_risk_assessment
    identifier = resource.model_dump(mode="json")["identifier"][0]

    async def go() -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
        async with _fhir(sekmet) as fhir:
            first = await write(fhir, resource, mode=WriteMode.UPDATE_AS_CREATE)
            fhir_written.append(first)
            second = await write(fhir, resource, mode="update-as-create")
            fhir_written.append(second)
            back = await fhir.read(*first.split("/"))
            return first, second, back, await _ours(fhir, kind, identifier)

    first, second, back, ours = asyncio.run(go())
    assert first == second and first.startswith(f"{kind}/")
    assert [r["id"] for r in ours] == [first.split("/")[1]]  # one resource, not two
    assert back["meta"]["versionId"] == "2"  # the second write replaced the first
    model = DetectedIssue if kind == "DetectedIssue" else RiskAssessment
    parsed = model.model_validate(back).model_dump(mode="json")
    assert parsed["identifier"] == [identifier]
    assert parsed["contained"][0]["identifier"][0]["value"] == scored.result.model.sha256  # type: ignore[union-attr]
    if kind == "DetectedIssue":
        assert parsed["patient"] == {"reference": f"Patient/{scored.patient_id}"}
        assert parsed["implicated"] == [{"reference": f"ImagingStudy/{scored.imaging_study_id}"}]
        assert parsed["severity"] == "high" and parsed["code"]["coding"][0]["code"] == "synthetic-image"
        assert parsed["evidence"][1]["detail"] == [{"reference": f"Patient/{scored.patient_id}"}]
    else:
        assert parsed["subject"] == {"reference": f"Patient/{scored.patient_id}"}
        assert parsed["basis"] == [{"reference": f"ImagingStudy/{scored.imaging_study_id}"}]
        probabilities = {
            p["outcome"]["coding"][0]["code"]: p["probabilityDecimal"] for p in parsed["prediction"]
        }
        assert probabilities["synthetic-image"] == pytest.approx(scored.result.scores.synthetic, abs=1e-4)


def test_the_references_point_at_the_loaded_record(scored: Scored, sekmet) -> None:
    async def go() -> dict[str, Any]:
        async with _fhir(sekmet) as fhir:
            await fhir.read("Patient", scored.patient_id)
            return await fhir.read("ImagingStudy", scored.imaging_study_id)

    study = asyncio.run(go())
    assert study["subject"]["reference"] == f"Patient/{scored.patient_id}"


def test_conditional_create_is_refused_by_a_server_that_cannot_search_by_identifier(
    scored: Scored, sekmet
) -> None:
    """sekmet-fhir has no ``identifier`` search on DetectedIssue: the refusal is the connectors' error,
    and nothing is created (which is why it takes ``update-as-create``)."""
    issue = detected_issue(
        _flagged(scored.result),
        patient_reference=f"Patient/{scored.patient_id}",
        imaging_study_reference=f"ImagingStudy/{scored.imaging_study_id}",
    )

    async def go() -> tuple[int, int]:
        async with _fhir(sekmet) as fhir:
            before = len(await fhir.search_all("DetectedIssue", {"_count": 500}))
            with pytest.raises(RequestRejected) as caught:
                await write_detected_issue(fhir, issue, mode=WriteMode.CONDITIONAL_CREATE)
            assert caught.value.status == 400
            assert any("identifier" in text for text in caught.value.issues)
            return before, len(await fhir.search_all("DetectedIssue", {"_count": 500}))

    before, after = asyncio.run(go())
    assert after == before


# -- PACS -------------------------------------------------------------------------------------------


def _pacs(orthanc) -> DicomWebSource:
    return DicomWebSource(
        orthanc.dicomweb, credentials=Credentials(username=orthanc.user[0], password=orthanc.user[1])
    )


@pytest.fixture(scope="module")
def stored_sr(scored: Scored, orthanc) -> Iterator[tuple[hd.sr.Comprehensive3DSR, Dataset]]:
    """The SR of the scored study with its heatmap, stored to Orthanc; deleted from it afterwards."""
    with _pacs(orthanc) as pacs:
        headers = pacs.study_metadata(scored.study_uid)  # WADO-RS metadata: headers are enough
        images = [h for h in headers if h.get("Modality") == "DX"]
        image = next((h for h in images if h.get("ViewPosition") in ("PA", "AP")), images[0])
        sr = structured_report(
            scored.result, headers, heatmap=TamperHeatmap(scored.prediction.heatmap, image)
        )
        store_structured_report(pacs, sr)
    try:
        yield sr, image
    finally:
        found = httpx.post(
            f"{orthanc.url}/tools/lookup", content=sr.SOPInstanceUID, auth=orthanc.user, timeout=10
        )
        (item,) = found.raise_for_status().json()
        deleted = httpx.delete(f"{orthanc.url}/instances/{item['ID']}", auth=orthanc.user, timeout=10)
        deleted.raise_for_status()


def test_structured_report_found_by_qido_and_read_from_wado(
    stored_sr, scored: Scored, orthanc, tmp_path
) -> None:
    sr, image = stored_sr
    with _pacs(orthanc) as pacs:
        series = [s for s in pacs.find_series(scored.study_uid) if s.get("Modality") == "SR"]
        assert [s.SeriesInstanceUID for s in series] == [sr.SeriesInstanceUID]
        (instance,) = pacs.find_instances(scored.study_uid, sr.SeriesInstanceUID)
        assert instance.SOPInstanceUID == sr.SOPInstanceUID
        path = pacs.download_instance(
            scored.study_uid, sr.SeriesInstanceUID, sr.SOPInstanceUID, tmp_path / "sr.dcm"
        )
    ds = pydicom.dcmread(path)
    report = hd.sr.srread(path)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.StudyInstanceUID == scored.study_uid and ds.PatientID == image.PatientID

    (evaluations,) = report.content.get_image_measurement_groups()
    answers = {e.name: e.value.value for e in evaluations.get_qualitative_evaluations()}
    result = scored.result
    assert answers[REVIEW_RECOMMENDED] == (YES if result.flagged else NO)
    synthetic = result.scores.synthetic is not None and result.scores.synthetic >= result.threshold
    assert answers[SYNTHETIC_OR_TAMPERED] == (YES if synthetic else NO)
    assert IMAGE_CONSISTENT_WITH_RECORD in answers
    (name,) = hd.sr.utils.find_content_items(evaluations[0], name=codes.DCM.AlgorithmName)
    assert name.value == result.model.name  # type: ignore[union-attr]

    (region,) = report.content.get_planar_roi_measurement_groups()
    assert region.finding_type == TAMPER_REGION
    (source,) = region.roi.ContentSequence  # SELECTED FROM: the image the heatmap was computed on
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    polygon = region.roi.value
    assert polygon.shape == (5, 2) and (polygon[0] == polygon[-1]).all()
    assert 0 <= polygon[:, 0].min() < polygon[:, 0].max() <= int(image.Columns)
    assert 0 <= polygon[:, 1].min() < polygon[:, 1].max() <= int(image.Rows)
