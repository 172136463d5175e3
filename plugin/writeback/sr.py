"""A ``CrossCheckResult`` as a DICOM Structured Report, and its STOW-RS to the PACS.

    sr = structured_report(result, headers, heatmap=TamperHeatmap(prediction.heatmap, image))
    store_structured_report(pacs, sr)

The report is a Comprehensive 3D SR holding a TID 1500 Measurement Report (built
with highdicom), in the source study, in a series of its own:

- observation context: the algorithm as a device observer (TID 1004: manufacturer
  ``imaging-crosscheck``, the model's name, a UID derived from its weights);
- one Measurement Group (TID 1501) with the Algorithm Identification (TID 4019:
  name, version, sha256 and threshold as parameters), three qualitative evaluations
  answered Yes / No / Unknown (image consistent with the patient's record; image
  synthetic or tampered; review recommended) and the calibrated probabilities and
  review score as numeric measurements (unit UCUM ``1``);
- with a tamper heatmap, a Planar ROI group (TID 1410): the heatmap's hottest region
  as a closed POLYLINE (the 2-D SCOORD polygon) on the image it was computed on, with
  the model's probability that the region is tampered.

A study that was not flagged gets the same report with the answers that say so (a
"consistent" report). The concepts no standard has are the private coding scheme
``99XCHECK``, declared in the Coding Scheme Identification Sequence (`plugin.writeback.codes`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from connectors.dicom.web import DicomWebSource
from fusion.features import FeatureConfig
from fusion.result import CrossCheckResult, ModelInfo
from plugin.errors import InvalidWriteBack, UnsuitableResult
from plugin.writeback.algorithm import algorithm_of, device_uid
from plugin.writeback.codes import (
    IMAGE_CONSISTENT_WITH_RECORD,
    MANUFACTURER,
    NO,
    PROBABILITY_INCONSISTENT,
    PROBABILITY_REGION_TAMPERED,
    PROBABILITY_SYNTHETIC,
    REVIEW_RECOMMENDED,
    REVIEW_SCORE,
    SYNTHETIC_OR_TAMPERED,
    TAMPER_REGION,
    UNKNOWN,
    YES,
    coding_scheme_identification,
)

__all__ = [
    "SERIES_NUMBER",
    "TamperHeatmap",
    "encode_structured_report",
    "store_structured_report",
    "structured_report",
]

logger = logging.getLogger(__name__)

#: Series Number of the report's series: high, apart from the acquisition's series
SERIES_NUMBER = 9901
_WHAT = "Comprehensive 3D SR"
_NOT_IMAGES = frozenset({"SR", "KO", "PR", "SEG", "DOC", "REG", "RWV", "PLAN", "FID"})


@dataclass(frozen=True)
class TamperHeatmap:
    """The model's tamper heatmap and the image it was computed on.

    ``logits``: ``(h, w)`` logits of p(tampered) per region, as ``Prediction.heatmap``
    of ``Scorer.explain_many``; they lie over a ``crop`` x ``crop`` pixel window centred
    on the frame the forensic branch examined (``FeatureConfig.forensic_crop`` of the
    model; zero-padded where the image is smaller), so each cell is ``crop / h`` pixels.
    ``instance``: that image (its header is enough: SOPClassUID, SOPInstanceUID, Rows,
    Columns), one of the report's source instances; ``frame_number``: the 1-based frame
    of a multi-frame image.
    """

    logits: NDArray[np.floating[Any]]
    instance: Dataset
    frame_number: int | None = None
    crop: int = FeatureConfig().forensic_crop

    def peak(self) -> tuple[NDArray[np.float64], float]:
        """The hottest cell that lies on the image: its outline as a closed polygon of
        (column, row) image coordinates (0.0 the top-left pixel's outer corner) and p(tampered)."""
        logits = np.asarray(self.logits, dtype=np.float64)
        rows, columns = int(self.instance.Rows), int(self.instance.Columns)
        h, w = logits.shape
        y0, y1 = _cell_edges(h, self.crop, rows)
        x0, x1 = _cell_edges(w, self.crop, columns)
        on_image = ((y1 > y0)[:, None] & (x1 > x0)[None, :]) & np.isfinite(logits)
        if not on_image.any():
            raise UnsuitableResult(
                f"the tamper heatmap has no finite value over image {self.instance.SOPInstanceUID}; "
                "pass the heatmap the model computed on that image"
            )
        r, c = np.unravel_index(int(np.argmax(np.where(on_image, logits, -np.inf))), logits.shape)
        polygon = np.array(
            [[x0[c], y0[r]], [x1[c], y0[r]], [x1[c], y1[r]], [x0[c], y1[r]], [x0[c], y0[r]]], dtype=np.float64
        )
        return polygon, float(1.0 / (1.0 + np.exp(-logits[r, c])))


def structured_report(
    result: CrossCheckResult,
    source: Sequence[Dataset],
    *,
    heatmap: TamperHeatmap | None = None,
    series_number: int = SERIES_NUMBER,
    instance_number: int = 1,
    institution_name: str | None = None,
    content_datetime: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``result`` for the study of ``source``.

    ``source``: instances (headers are enough, e.g. WADO-RS metadata) of the study
    the result is about; the report copies the patient and study from them and lists
    them as evidence. New Series and SOP Instance UIDs; ``content_datetime`` (default
    now, local time) becomes the content and series date and time.
    `UnsuitableResult` when the inputs do not fit together (another study, a heatmap
    for an image not among ``source``, a result without its model).
    """
    model = algorithm_of(result)
    _check_source(result, source)
    if heatmap is not None:
        _check_heatmap(heatmap, source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"sha256={model.sha256}", f"threshold={result.threshold:.4f}"],
        manufacturer=MANUFACTURER,
    )
    when = content_datetime or datetime.now()
    try:
        groups: list[Any] = [_evaluations(result, algorithm, heatmap)]
        if heatmap is not None:
            groups.append(_region(heatmap, algorithm))
        report = hd.sr.MeasurementReport(
            observation_context=_observation_context(model),
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
            title=codes.DCM.ImagingMeasurementReport,
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(source),
            content=report,
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,  # a machine's result, preliminary until a person has reviewed it
            institution_name=institution_name,
            coding_schemes=[coding_scheme_identification()],
            series_description="Image cross-check (imaging-crosscheck)",
            manufacturer_model_name=model.name,
            software_versions=model.version,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidWriteBack(_WHAT, f"{type(exc).__name__}: {exc}") from exc
    logger.debug("Structured Report %s for study %s", sr.SOPInstanceUID, result.case.study_instance_uid)
    return sr


def encode_structured_report(sr: hd.sr.Comprehensive3DSR) -> bytes:
    """The report as a DICOM Part 10 file, after reading it back with pydicom and highdicom.

    `InvalidWriteBack` when what was written does not read back as the same report.
    """
    buffer = BytesIO()
    try:
        pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
        data = buffer.getvalue()
        back = hd.sr.srread(BytesIO(data))
    except Exception as exc:  # pydicom and highdicom raise many types; any of them means our bug
        raise InvalidWriteBack(_WHAT, f"does not read back ({type(exc).__name__}: {exc})") from exc
    if back.SOPInstanceUID != sr.SOPInstanceUID or len(back.ContentSequence) != len(sr.ContentSequence):
        raise InvalidWriteBack(_WHAT, "reads back with another SOP Instance UID or content")
    return data


def store_structured_report(pacs: DicomWebSource, sr: hd.sr.Comprehensive3DSR) -> None:
    """STOW-RS the report to the PACS (into its source study); a ``ServerError`` if refused."""
    pacs.store_datasets([sr])
    logger.debug("stored Structured Report %s", sr.SOPInstanceUID)


# -- content ----------------------------------------------------------------------------------------


def _observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(model),
        name=model.name,
        manufacturer_name=MANUFACTURER,
        model_name=model.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _evaluations(
    result: CrossCheckResult, algorithm: hd.sr.AlgorithmIdentification, heatmap: TamperHeatmap | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    s, threshold = result.scores, result.threshold
    p_inconsistent = None if s.consistency is None else 1.0 - s.consistency
    consistent = UNKNOWN if p_inconsistent is None else NO if p_inconsistent >= threshold else YES
    synthetic = UNKNOWN if s.synthetic is None else YES if s.synthetic >= threshold else NO
    evaluations = [
        hd.sr.QualitativeEvaluation(IMAGE_CONSISTENT_WITH_RECORD, consistent),
        hd.sr.QualitativeEvaluation(SYNTHETIC_OR_TAMPERED, synthetic),
        hd.sr.QualitativeEvaluation(REVIEW_RECOMMENDED, YES if result.flagged else NO),
    ]
    measurements = [_probability(REVIEW_SCORE, s.overall)]
    if p_inconsistent is not None:
        measurements.append(_probability(PROBABILITY_INCONSISTENT, p_inconsistent))
    if s.synthetic is not None:
        measurements.append(_probability(PROBABILITY_SYNTHETIC, s.synthetic))
    sources = None
    if heatmap is not None:
        sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(heatmap.instance, _frames(heatmap))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="Image-record cross-check"
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
        measurements=measurements,
        source_images=sources,
    )


def _region(
    heatmap: TamperHeatmap, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    polygon, probability = heatmap.peak()
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,  # closed: first point = last point
        graphic_data=polygon,
        source_image=hd.sr.SourceImageForRegion.from_source_image(heatmap.instance, _frames(heatmap)),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Tamper heatmap peak"),
        referenced_region=region,
        finding_type=TAMPER_REGION,
        algorithm_id=algorithm,
        measurements=[_probability(PROBABILITY_REGION_TAMPERED, probability)],
    )


def _probability(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(value), 4), unit=codes.UCUM.NoUnits)


def _frames(heatmap: TamperHeatmap) -> list[int] | None:
    return None if heatmap.frame_number is None else [heatmap.frame_number]


def _cell_edges(cells: int, crop: int, size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Start and end, in image coordinates clipped to the image, of each heatmap cell along one axis.

    The crop window is centred the way ``fusion.features`` centres it: it starts at
    ``(size - crop) // 2``, before the image's first pixel when the image is smaller.
    """
    start = (size - crop) // 2 + np.arange(cells, dtype=np.float64) * (crop / cells)
    return np.clip(start, 0, size), np.clip(start + crop / cells, 0, size)


# -- checks of the inputs -------------------------------------------------------------------------


def _check_source(result: CrossCheckResult, source: Sequence[Dataset]) -> None:
    study = result.case.study_instance_uid
    if not source:
        raise UnsuitableResult(f"no source instances for study {study}: pass its instances (headers will do)")
    for ds in source:
        missing = [
            k
            for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
            if k not in ds
        ]
        if missing:
            raise UnsuitableResult(
                f"a source instance lacks {', '.join(missing)}; pass DICOM instance headers"
            )
        if str(ds.StudyInstanceUID) != study:
            raise UnsuitableResult(
                f"source instance {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, not to study "
                f"{study} of the result; pass the instances of the study that was scored"
            )


def _check_heatmap(heatmap: TamperHeatmap, source: Sequence[Dataset]) -> None:
    ds = heatmap.instance
    uid = str(ds.get("SOPInstanceUID", ""))
    if uid not in {str(s.SOPInstanceUID) for s in source}:
        raise UnsuitableResult(
            f"the heatmap's image {uid or '(without SOPInstanceUID)'} is not among the source instances; "
            "pass the image the model examined, and include it in source"
        )
    if str(ds.get("Modality", "")) in _NOT_IMAGES or not ds.get("Rows") or not ds.get("Columns"):
        raise UnsuitableResult(f"the heatmap's instance {uid} is not an image with Rows and Columns")
    if np.ndim(heatmap.logits) != 2 or 0 in np.shape(heatmap.logits):
        raise UnsuitableResult(
            f"the tamper heatmap must be a non-empty 2-D array, not of shape {np.shape(heatmap.logits)}"
        )
    if heatmap.crop < 1:
        raise UnsuitableResult(f"the heatmap's crop must be a positive number of pixels, not {heatmap.crop}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if heatmap.frame_number is None and frames > 1:
        raise UnsuitableResult(
            f"image {uid} has {frames} frames: say which one the heatmap is on (frame_number)"
        )
    if heatmap.frame_number is not None and not 1 <= heatmap.frame_number <= frames:
        raise UnsuitableResult(
            f"frame_number {heatmap.frame_number} is not a frame of image {uid} (1..{frames})"
        )
