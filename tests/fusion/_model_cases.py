"""Small hand-made ``Case`` objects for the model tests (no files, no simulator).

A "condition" case shows a bright round opacity in the right lung (DX, CT) or
a bright lesion (MR) and its record carries pneumonia (or a brain tumour), a
high CRP and a report saying so; a normal case shows nothing and its record is
normal. Synthetic pixels are a smoothed, noise-free copy of the image (what a
VAE decoder produces), so both heads have an easily learnable signal.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
from scipy import ndimage

from connectors.domain import (
    Case,
    Coding,
    Condition,
    DiagnosticReport,
    ImagingOrder,
    Instance,
    LabResult,
    LinkMethod,
    Patient,
    PatientIdentity,
    PatientRecord,
    ReferenceRange,
    Series,
    Study,
)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
STUDY_TIME = datetime(2024, 3, 1, 10, 0)
UID_ROOT = "1.2.826.0.1.3680043.10.999"


def phantom(
    modality: str, size: int, *, lesion: bool, seed: int, smooth: bool = False, slices: int = 5
) -> np.ndarray:
    """(slices, size, size) for CT/MR, (size, size) for DX, in physical-ish units."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    blob = ((xx - 0.3) / 0.1) ** 2 + ((yy - 0.45) / 0.1) ** 2 < 1
    if modality == "CT":
        lungs = body & (
            (((xx - 0.3) / 0.14) ** 2 + ((yy - 0.45) / 0.25) ** 2 < 1)
            | (((xx - 0.7) / 0.14) ** 2 + ((yy - 0.45) / 0.25) ** 2 < 1)
        )
        base = np.where(body, 40.0, -1000.0)
        base = np.where(lungs, -820.0, base)
        if lesion:
            base = np.where(blob, 30.0, base)
        noise_sd = 25.0
    elif modality == "MR":
        base = np.where(body, 400.0, 5.0)
        if lesion:
            base = np.where(blob, 900.0, base)
        noise_sd = 20.0
    else:
        base = np.where(body, 1800.0, 300.0)
        lungs = body & (((xx - 0.3) / 0.14) ** 2 + ((yy - 0.45) / 0.25) ** 2 < 1)
        base = np.where(lungs, 900.0, base)
        if lesion:
            base = np.where(blob, 1900.0, base)
        noise_sd = 40.0
    n = slices if modality in {"CT", "MR"} else 1
    out = np.stack([base + rng.normal(0, noise_sd, base.shape) for _ in range(n)]).astype(np.float32)
    if smooth:
        out = np.stack([ndimage.gaussian_filter(f, 2.0) for f in out]).astype(np.float32)
    return out if n > 1 else out[0]


def make_study(
    idx: int,
    modality: str,
    pixels: np.ndarray | None,
    *,
    undecodable: bool = False,
    views: tuple[str, ...] = ("PA",),
) -> Study:
    series: list[Series] = []
    frames = [pixels] if pixels is None or pixels.ndim == 2 else list(pixels)
    n_series = len(views) if modality == "DX" else 1
    for s in range(n_series):
        instances = []
        for k, frame in enumerate(frames):

            def loader(frame: np.ndarray | None = frame) -> np.ndarray:
                if undecodable or frame is None:
                    raise ValueError("JPEG 2000 codestream is corrupt")
                return frame

            rows = 0 if frame is None else frame.shape[0]
            instances.append(
                Instance(
                    sop_instance_uid=f"{UID_ROOT}.{idx}.{s + 1}.{k + 1}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    instance_number=k + 1,
                    rows=rows or 64,
                    columns=rows or 64,
                    view_position=views[s] if modality == "DX" else None,
                    loader=loader,
                )
            )
        series.append(
            Series(
                series_instance_uid=f"{UID_ROOT}.{idx}.{s + 1}",
                modality=modality,
                instances=tuple(instances),
                series_number=s + 1,
                body_part_examined="HEAD" if modality == "MR" else "CHEST",
                view_position=views[s] if modality == "DX" else None,
            )
        )
    return Study(
        study_instance_uid=f"{UID_ROOT}.{idx}",
        patient=PatientIdentity(patient_id=f"MRN{idx}", sex="F" if idx % 2 else "M"),
        series=tuple(series),
        accession_number=f"ACC{idx}",
        study_datetime=STUDY_TIME,
    )


def make_record(
    idx: int, *, condition: bool, modality: str = "DX"
) -> tuple[PatientRecord, ImagingOrder, DiagnosticReport]:
    brain = modality == "MR"
    crp_value = 85.0 if condition else 2.0
    labs = (
        LabResult(
            id=f"crp-{idx}",
            code=Coding(LOINC, "1988-5", "CRP"),
            value=crp_value,
            unit="mg/L",
            reference_range=ReferenceRange(0.0, 5.0),
            effective=STUDY_TIME - timedelta(days=1),
            category="laboratory",
        ),
        LabResult(
            id=f"wbc-{idx}",
            code=Coding(LOINC, "6690-2", "WBC"),
            value=16.0 if condition else 7.0,
            unit="10*3/uL",
            reference_range=ReferenceRange(4.0, 11.0),
            effective=STUDY_TIME - timedelta(days=1),
            category="laboratory",
        ),
        LabResult(
            id=f"bmi-{idx}",
            code=Coding(LOINC, "39156-5", "BMI"),
            value=24.0 + idx % 7,
            unit="kg/m2",
            effective=STUDY_TIME - timedelta(days=30),
            category="vital-signs",
        ),
    )
    cond_code = (
        Coding(SNOMED, "126952004", "Brain tumour") if brain else Coding(SNOMED, "233604007", "Pneumonia")
    )
    conditions = (
        (
            Condition(
                id=f"cond-{idx}",
                codes=(cond_code,),
                clinical_status="active",
                onset=STUDY_TIME - timedelta(days=3),
            ),
        )
        if condition
        else ()
    )
    patient = Patient(
        id=f"p{idx}", gender="female" if idx % 2 else "male", birth_date=date(1950 + idx % 40, 5, 17)
    )
    order = ImagingOrder(
        id=f"order-{idx}",
        codes=(Coding(LOINC, "36643-5", "XR Chest 2V"),),
        authored=STUDY_TIME - timedelta(hours=5),
        reason_codes=(cond_code,) if condition else (),
        accession_number=f"ACC{idx}",
    )
    text = (
        ("Enhancing mass with oedema." if brain else "Right lung consolidation consistent with pneumonia.")
        if condition
        else "No acute abnormality."
    )
    report = DiagnosticReport(
        id=f"report-{idx}",
        codes=(Coding(LOINC, "18748-4", "Diagnostic imaging study"),),
        effective=STUDY_TIME,
        issued=STUDY_TIME + timedelta(hours=2),
        conclusion=text,
    )
    record = PatientRecord(
        patient=patient, labs=labs, conditions=conditions, orders=(order,), reports=(report,)
    )
    return record, order, report


def make_case(
    idx: int,
    *,
    modality: str = "DX",
    lesion: bool = False,
    record_condition: bool | None = None,
    smooth: bool = False,
    size: int = 48,
    slices: int = 5,
    with_record: bool = True,
    undecodable: bool = False,
) -> Case:
    """One case; the record says ``record_condition`` (default: what the image shows)."""
    pixels = phantom(modality, size, lesion=lesion, seed=idx, smooth=smooth, slices=slices)
    study = make_study(idx, modality, pixels, undecodable=undecodable)
    if not with_record:
        return Case(study=study)
    cond = lesion if record_condition is None else record_condition
    record, order, report = make_record(idx, condition=cond, modality=modality)
    return Case(study=study, record=record, order=order, report=report, link=LinkMethod.GIVEN)


def make_cohort(
    n: int, *, size: int = 48, seed: int = 0, manipulated_every: int = 4
) -> list:  # list[LabelledCase]
    """``n`` labelled cases: mostly clean (half with a lesion), every k-th manipulated."""
    from fusion.train import LabelledCase

    rng = np.random.default_rng(seed)
    kinds = ("synthetic", "finding-injected", "finding-removed", "wrong-patient")
    modalities = ("DX", "CT", "MR")
    out = []
    for i in range(n):
        modality = modalities[i % 3]
        lesion = bool(rng.integers(0, 2))
        idx = seed * 100_000 + i
        if manipulated_every and i % manipulated_every == manipulated_every - 1:
            kind = kinds[(i // manipulated_every) % len(kinds)]
            if kind == "synthetic":
                case = make_case(idx, modality=modality, lesion=lesion, smooth=True, size=size)
            elif kind == "finding-injected":
                case = make_case(
                    idx, modality=modality, lesion=True, record_condition=False, smooth=True, size=size
                )
            elif kind == "finding-removed":
                case = make_case(
                    idx, modality=modality, lesion=False, record_condition=True, smooth=True, size=size
                )
            else:
                case = make_case(
                    idx, modality=modality, lesion=lesion, record_condition=not lesion, size=size
                )
            out.append(LabelledCase(case=case, manipulation=kind, label="manipulated"))
        else:
            out.append(
                LabelledCase(
                    case=make_case(idx, modality=modality, lesion=lesion, size=size),
                    manipulation=None,
                    label="clean",
                )
            )
    return out
