"""Write-back after scoring: a FHIR DetectedIssue to the EHR and a DICOM SR to the PACS.

Run by the engine after a flagged result is stored (`plugin.service.engine.AfterScore`),
in the background: a slow or failing server never delays or fails the caller, and each
write is audited with its outcome. Both are idempotent (`plugin.writeback`): the same
study scored by the same model writes the same DetectedIssue identifier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from connectors.dicom.web import DicomWebSource
from connectors.domain import Case
from fusion.features import examined_frame
from fusion.scorer import Prediction
from plugin.store import Actor, ActorKind, AuditAction, StoredResult
from plugin.writeback.fhir import WriteMode, detected_issue, write_detected_issue
from plugin.writeback.sr import TamperHeatmap, store_structured_report, structured_report

__all__ = ["make_writeback"]

logger = logging.getLogger(__name__)

_SYSTEM = Actor(ActorKind.SYSTEM, "writeback")


def _headers(case: Case) -> tuple[list[Dataset], dict[str, Dataset]]:
    datasets: list[Dataset] = []
    by_uid: dict[str, Dataset] = {}
    for series in case.study.series:
        for instance in series.instances:
            if instance.path is None:
                continue
            ds = pydicom.dcmread(Path(instance.path), stop_before_pixels=True)
            datasets.append(ds)
            by_uid[instance.sop_instance_uid] = ds
    return datasets, by_uid


def make_writeback(state: object) -> Callable[[StoredResult, Case, Prediction], Awaitable[None]] | None:
    """The engine's after-score hook for ``state`` (a `ServiceState`), or None when nothing is
    configured to be written back."""
    from plugin.service.state import ServiceState

    assert isinstance(state, ServiceState)
    settings, servers = state.settings, state.servers
    fhir_on = settings.writeback_fhir and servers.fhir_url is not None
    pacs = state.engine.imaging if isinstance(state.engine.imaging, DicomWebSource) else None
    sr_on = settings.writeback_sr and pacs is not None
    if settings.writeback_fhir and not fhir_on:
        logger.warning("write-back to FHIR is on but no FHIR server is configured: nothing will be written")
    if settings.writeback_sr and not sr_on:
        logger.warning(
            "write-back of DICOM SR is on but no DICOMweb PACS is configured: nothing will be written"
        )
    if not (fhir_on or sr_on):
        return None

    async def after_score(stored: StoredResult, case: Case, prediction: Prediction) -> None:
        result = stored.result
        if not result.flagged:
            return
        if fhir_on and case.record is not None:
            study = next(
                (s for s in case.record.imaging_studies if s.study_instance_uid == case.study_instance_uid),
                None,
            )
            if study is not None:
                resource = detected_issue(
                    result,
                    patient_reference=f"Patient/{case.record.patient.id}",
                    imaging_study_reference=f"ImagingStudy/{study.id}",
                    review_url=f"{settings.public_url}/review/studies/{case.study_instance_uid}"
                    if settings.public_url
                    else None,
                )
                async with servers.fhir_client() as fhir:
                    written = await write_detected_issue(
                        fhir, resource, mode=WriteMode(settings.writeback_fhir_mode)
                    )
                await state.audit(
                    _SYSTEM,
                    AuditAction.WRITEBACK,
                    result_id=stored.id,
                    study_instance_uid=case.study_instance_uid,
                    detail={"to": "fhir", "resource": written},
                )
        if sr_on and pacs is not None:
            datasets, by_uid = await asyncio.to_thread(_headers, case)
            heatmap = None
            examined = examined_frame(case)
            if examined is not None and examined[0].sop_instance_uid in by_uid:
                instance, frame = examined
                heatmap = TamperHeatmap(
                    prediction.heatmap,
                    by_uid[instance.sop_instance_uid],
                    frame_number=frame if instance.number_of_frames > 1 else None,
                    crop=state.engine.scorer.bundle.config.features.forensic_crop,
                )
            sr = await asyncio.to_thread(structured_report, result, datasets, heatmap=heatmap)
            await asyncio.to_thread(store_structured_report, pacs, sr)
            await state.audit(
                _SYSTEM,
                AuditAction.WRITEBACK,
                result_id=stored.id,
                study_instance_uid=case.study_instance_uid,
                detail={"to": "pacs", "sop_instance_uid": str(sr.SOPInstanceUID)},
            )

    return after_score
