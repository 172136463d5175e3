"""Hand-built, self-consistent ``Case`` objects for the cross-check tests.

``make_case(modality)`` returns a case with no inconsistency at all (a chest
DX, chest CT or brain MR of one patient, with its order, report, ImagingStudy
and device); the ``with_*`` helpers change one thing at a time. Loaded by
``tests/fusion/conftest.py`` and handed to tests as the ``cf`` fixture.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from scipy import ndimage

from connectors.domain import (
    Case,
    Coding,
    DeviceRecord,
    DiagnosticReport,
    Equipment,
    ImagingOrder,
    ImagingStudyRecord,
    Instance,
    LinkMethod,
    Patient,
    PatientIdentifier,
    PatientIdentity,
    PatientRecord,
    Series,
    SiteDevice,
    SiteProfile,
    Study,
)
from fusion.checks import CheckContext
from fusion.result import Finding

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ROOT = "1.2.826.0.1.3680043.10.9999"
BIRTH = date(1970, 5, 17)
STUDY_AT = datetime(2024, 3, 5, 10, 0)
NOW = datetime(2024, 6, 1, 12, 0)

DEVICES = {
    "DX": SiteDevice("Acme Medical", "Radix 500", "DX-0001", "DX"),
    "CT": SiteDevice("Acme Medical", "Tomo 64", "CT-0042", "CT"),
    "MR": SiteDevice("Acme Medical", "Magna 3T", "MR-0007", "MR"),
}
SITE = SiteProfile(name="Sim General", uid_roots=(ROOT,), devices=tuple(DEVICES.values()))
ORDER_CODES = {
    "DX": Coding(LOINC, "36643-5", "XR Chest 2 Views"),
    "CT": Coding(LOINC, "24627-2", "CT Chest"),
    "MR": Coding(LOINC, "24590-2", "MR Brain"),
}
BODY_PART = {"DX": "CHEST", "CT": "CHEST", "MR": "HEAD"}
ACQUISITION: dict[str, dict[str, Any]] = {
    "DX": {"KVP": 120.0, "ExposureTime": 8, "DistanceSourceToDetector": 1800.0},
    "CT": {"KVP": 120.0, "XRayTubeCurrent": 200, "SliceThickness": 2.5, "ConvolutionKernel": "B30f"},
    "MR": {"MagneticFieldStrength": 3.0, "EchoTime": 95.0, "RepetitionTime": 4000.0},
}


def smooth_image(seed: int, n: int = 128, amplitude: float = 150.0) -> np.ndarray:
    """A chest-radiograph-like phantom: body, two lungs, random smooth structure, noise (0..4095)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    body = (((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.45) ** 2 < 1).astype(float)
    lungs = (((x - 0.32) / 0.13) ** 2 + ((y - 0.45) / 0.28) ** 2 < 1) | (
        ((x - 0.68) / 0.13) ** 2 + ((y - 0.45) / 0.28) ** 2 < 1
    )
    blobs = ndimage.gaussian_filter(rng.normal(size=(n, n)), n / 20)
    blobs /= blobs.std()
    img = 500 + 2000 * body - 1200 * lungs + amplitude * blobs * body + rng.normal(0, 10, (n, n))
    return np.clip(img, 0, 4095).astype(np.float32)


def ct_slice(seed: int = 0, n: int = 64, padding: float | None = -2048.0) -> np.ndarray:
    """An axial chest CT slice in HU: air, soft-tissue body, lungs, padding outside the FOV circle."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.full((n, n), -1000.0)
    body = ((x - 0.5) / 0.4) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
    img[body] = 40.0
    lungs = (((x - 0.35) / 0.1) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1) | (
        ((x - 0.65) / 0.1) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1
    )
    img[lungs] = -850.0
    img += rng.normal(0, 15, (n, n))
    if padding is not None:
        img[(x - 0.5) ** 2 + (y - 0.5) ** 2 > 0.25] = padding
    return img.astype(np.float32)


def _pixels_for(modality: str, seed: int) -> np.ndarray:
    if modality == "CT":
        return ct_slice(seed)
    if modality == "MR":
        return (smooth_image(seed, 64) / 4).astype(np.float32)
    return smooth_image(seed)


def make_instance(
    modality: str, series_no: int, k: int, seed: int = 0, pixels: np.ndarray | None = None
) -> Instance:
    arr = _pixels_for(modality, seed + k) if pixels is None else pixels
    ct = modality == "CT"
    return Instance(
        sop_instance_uid=f"{ROOT}.3.{series_no}.{k + 1}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2" if ct else "1.2.840.10008.5.1.4.1.1.1.1",
        instance_number=k + 1,
        implementation_class_uid=f"{ROOT}.0.1",
        implementation_version_name="ACME_RADIX_5",
        rows=arr.shape[-2],
        columns=arr.shape[-1],
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=16 if ct else 12,
        pixel_representation=1 if ct else 0,
        rescale_slope=1.0 if ct else None,
        rescale_intercept=-1024.0 if ct else None,
        slice_thickness=2.5 if ct else None,
        acquisition_datetime=STUDY_AT + timedelta(minutes=5 + k),
        acquisition=dict(ACQUISITION[modality]),
        loader=lambda arr=arr: arr,
    )


def make_study(modality: str = "DX", n_instances: int = 1, seed: int = 0, uid: str = f"{ROOT}.1.1") -> Study:
    dev = DEVICES[modality]
    series = Series(
        series_instance_uid=f"{ROOT}.2.1",
        modality=modality,
        instances=tuple(make_instance(modality, 1, k, seed) for k in range(n_instances)),
        series_number=1,
        body_part_examined=BODY_PART[modality],
        series_datetime=STUDY_AT,
        equipment=Equipment(manufacturer=dev.manufacturer, model=dev.model, serial_number=dev.serial_number),
    )
    return Study(
        study_instance_uid=uid,
        patient=PatientIdentity(
            patient_id="MRN-12345",
            name="Núñez^Ana^María",
            birth_date=BIRTH,
            sex="F",
            age="053Y",
        ),
        series=(series,),
        accession_number="ACC-1",
        study_datetime=STUDY_AT,
    )


def make_case(modality: str = "DX", n_instances: int = 1, seed: int = 0) -> Case:
    """A case with no inconsistency (see the module docstring)."""
    study = make_study(modality, n_instances, seed)
    patient = Patient(
        id="pat-1",
        identifiers=(PatientIdentifier("urn:sim:mrn", "MRN-12345", "MR"),),
        family="NUNEZ",
        given=("Ana", "Maria"),
        gender="female",
        birth_date=BIRTH,
    )
    order = ImagingOrder(
        id="ord-1",
        codes=(ORDER_CODES[modality],),
        status="completed",
        intent="order",
        authored=STUDY_AT - timedelta(days=1),
        accession_number="ACC-1",
    )
    report = DiagnosticReport(
        id="rep-1",
        codes=(ORDER_CODES[modality],),
        status="final",
        effective=STUDY_AT,
        issued=STUDY_AT + timedelta(hours=3),
        imaging_study_ids=("ims-1",),
        based_on=("ord-1",),
    )
    dev = DEVICES[modality]
    device = DeviceRecord(
        id="dev-1", manufacturer=dev.manufacturer, model=dev.model, serial_number=dev.serial_number
    )
    ims = ImagingStudyRecord(
        id="ims-1",
        study_instance_uid=study.study_instance_uid,
        status="available",
        started=STUDY_AT,
        accession_number="ACC-1",
        modalities=(modality,),
        series_uids=tuple(s.series_instance_uid for s in study.series),
        device_ids=("dev-1",),
    )
    record = PatientRecord(
        patient=patient, orders=(order,), reports=(report,), devices=(device,), imaging_studies=(ims,)
    )
    return Case(
        study=study,
        record=record,
        order=order,
        report=report,
        imaging_study=ims,
        link=LinkMethod.ACCESSION_NUMBER,
    )


def ctx(**kw: Any) -> CheckContext:
    return CheckContext(**{"site": SITE, "now": NOW, **kw})


def with_dicom_patient(case: Case, **kw: Any) -> Case:
    return replace(case, study=replace(case.study, patient=replace(case.study.patient, **kw)))


def with_fhir_patient(case: Case, **kw: Any) -> Case:
    assert case.record is not None
    return replace(case, record=replace(case.record, patient=replace(case.record.patient, **kw)))


def with_study(case: Case, **kw: Any) -> Case:
    return replace(case, study=replace(case.study, **kw))


def with_series(case: Case, **kw: Any) -> Case:
    return with_study(case, series=tuple(replace(s, **kw) for s in case.study.series))


def with_instances(case: Case, **kw: Any) -> Case:
    series = tuple(
        replace(s, instances=tuple(replace(i, **kw) for i in s.instances)) for s in case.study.series
    )
    return with_study(case, series=series)


def with_equipment(case: Case, **kw: Any) -> Case:
    return with_study(
        case, series=tuple(replace(s, equipment=replace(s.equipment, **kw)) for s in case.study.series)
    )


def with_order(case: Case, **kw: Any) -> Case:
    assert case.order is not None
    return replace(case, order=replace(case.order, **kw))


def with_report(case: Case, **kw: Any) -> Case:
    assert case.report is not None
    return replace(case, report=replace(case.report, **kw))


def with_pixels(case: Case, pixels: np.ndarray) -> Case:
    return with_instances(case, loader=lambda: pixels, rows=pixels.shape[-2], columns=pixels.shape[-1])


def codes(findings: list[Finding] | tuple[Finding, ...]) -> set[tuple[str, str]]:
    """(code, severity) of each finding, for assertions."""
    return {(f.code, f.severity.value) for f in findings}
