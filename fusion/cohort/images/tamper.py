"""Header tampering applied while writing: identity, dates, or device/toolkit traces.

``plan_tamper`` decides once per study, from the seed, exactly what changes;
``HeaderTamper.apply`` then edits each dataset the same way:

- HEADER_IDENTITY: PatientName and/or PatientBirthDate/PatientSex become another
  plausible person's (PatientAge follows a changed birth date); PatientID stays;
- HEADER_DATES: StudyDate, SeriesDate, AcquisitionDate and ContentDate move
  to before the order or after the report, by days to years;
- HEADER_DEVICE: either a device the site does not own (manufacturer, model,
  serial, station, software), or a re-write by a general-purpose toolkit
  (pydicom's or DCMTK's implementation UID and version name) that dropped some
  acquisition attributes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from fusion.cohort.scenario import Manipulation, PatientScenario, SimSite, StudyPlan

__all__ = ["ACQUISITION_KEYWORDS", "HeaderTamper", "plan_tamper", "uid_under"]

ACQUISITION_KEYWORDS = {
    "DX": (
        "KVP",
        "ExposureTime",
        "XRayTubeCurrent",
        "Exposure",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "ImagerPixelSpacing",
        "DetectorType",
    ),
    "CT": (
        "KVP",
        "XRayTubeCurrent",
        "ExposureTime",
        "ConvolutionKernel",
        "ReconstructionDiameter",
        "GantryDetectorTilt",
    ),
    "MR": (
        "MagneticFieldStrength",
        "EchoTime",
        "RepetitionTime",
        "ScanningSequence",
        "SequenceVariant",
        "ImagingFrequency",
    ),
}

_FAMILY = (
    "Hartmann",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Castillo",
    "Novak",
    "Brennan",
    "Takahashi",
    "Adeyemi",
    "Kowalski",
    "Fischer",
    "Rossi",
    "Patel",
    "Nguyen",
    "O'Brien",
    "Svensson",
)
_GIVEN = {
    "M": ("Thomas", "Daniel", "Kwame", "Lukas", "Mateo", "Hiroshi", "Piotr", "Samuel"),
    "F": ("Anna", "Grace", "Ingrid", "Chloe", "Amara", "Yuki", "Elena", "Maria"),
}
_FOREIGN = (
    ("Siemens Healthineers", "Ysio Max", "DX"),
    ("Carestream", "DRX-Evolution", "DX"),
    ("GE HealthCare", "Revolution EVO", "CT"),
    ("Canon Medical", "Aquilion Prime", "CT"),
    ("Philips", "Ingenia", "MR"),
    ("Siemens Healthineers", "MAGNETOM Sola", "MR"),
)
_TOOLKITS = (
    ("1.2.826.0.1.3680043.8.498.1", "PYDICOM 3.0.2"),
    ("1.2.276.0.7230010.3.0.3.6.8", "OFFIS_DCMTK_368"),
)


def _age(birth: date, on: date) -> str:
    years = int((on - birth).days / 365.25)
    return f"{max(years, 0):03d}Y"


@dataclass(frozen=True)
class HeaderTamper:
    """Attribute overrides and deletions, and file-meta overrides, applied to every file."""

    kind: Manipulation
    variant: str
    set_values: dict[str, Any] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def keywords(self) -> frozenset[str]:
        """The attributes (dataset and file meta) this tamper touches."""
        return frozenset(self.set_values) | frozenset(self.delete) | frozenset(self.meta)

    def apply(self, ds: Dataset) -> None:
        for kw, value in self.set_values.items():
            if kw in ("AcquisitionDate", "ContentDate") and kw not in ds:
                continue
            setattr(ds, kw, value)
        for kw in self.delete:
            if kw in ds:
                delattr(ds, kw)
        for kw, value in self.meta.items():
            setattr(ds.file_meta, kw, value)


def plan_tamper(
    kind: Manipulation | str,
    scenario: PatientScenario,
    plan: StudyPlan,
    site: SimSite,
    modality: str,
    seed: int,
) -> HeaderTamper:
    """Decide, from ``seed``, how the header of this study is tampered with."""
    kind = Manipulation(kind)
    rng = np.random.default_rng([seed, 7919])
    study_day = plan.study_datetime.date()
    if kind is Manipulation.HEADER_IDENTITY:
        variant = str(rng.choice(["name", "name+birth", "birth+sex", "name+birth+sex"]))
        sex = "M" if scenario.gender == "male" else "F"
        values: dict[str, Any] = {}
        if "sex" in variant:
            sex = "F" if sex == "M" else "M"
            values["PatientSex"] = sex
        if "name" in variant:
            family = str(rng.choice([f for f in _FAMILY if f != scenario.family]))
            values["PatientName"] = f"{family}^{rng.choice(_GIVEN[sex])}"
        if "birth" in variant:
            shift = int(rng.integers(400, 9000)) * (1 if rng.uniform() < 0.5 else -1)
            birth = scenario.birth_date + timedelta(days=shift)
            if birth >= study_day:
                birth = scenario.birth_date - timedelta(days=abs(shift))
            values["PatientBirthDate"] = birth.strftime("%Y%m%d")
            values["PatientAge"] = _age(birth, study_day)
            if values["PatientAge"] == _age(scenario.birth_date, study_day):
                del values["PatientAge"]
        return HeaderTamper(kind, variant, values)
    if kind is Manipulation.HEADER_DATES:
        if rng.uniform() < 0.5:
            variant = "before-order"
            new = plan.order_datetime.date() - timedelta(days=int(rng.integers(2, 1100)))
        else:
            variant = "after-report"
            new = plan.report_datetime.date() + timedelta(days=int(rng.integers(2, 1800)))
        d = new.strftime("%Y%m%d")
        return HeaderTamper(
            kind, variant, {k: d for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")}
        )
    if kind is Manipulation.HEADER_DEVICE:
        if rng.uniform() < 0.5:
            owned = {(d.manufacturer, d.model) for d in site.devices}
            choices = [f for f in _FOREIGN if f[2] == modality and (f[0], f[1]) not in owned] or [
                ("Unknown Imaging", "Model X", modality)
            ]
            man, model, _ = choices[int(rng.integers(len(choices)))]
            serial = str(int(rng.integers(10_000, 99_999)))
            values = {
                "Manufacturer": man,
                "ManufacturerModelName": model,
                "DeviceSerialNumber": serial,
                "StationName": f"{model.split()[0].upper()[:8]}{int(rng.integers(1, 9))}",
                "SoftwareVersions": f"VE{int(rng.integers(10, 60))}A",
            }
            return HeaderTamper(kind, "foreign-device", values)
        uid, name = _TOOLKITS[int(rng.integers(len(_TOOLKITS)))]
        pool = ACQUISITION_KEYWORDS[modality]
        k = int(rng.integers(2, min(4, len(pool)) + 1))
        dropped = tuple(sorted(str(x) for x in rng.choice(pool, size=k, replace=False)))
        return HeaderTamper(
            kind,
            "toolkit",
            delete=dropped,
            meta={"ImplementationClassUID": uid, "ImplementationVersionName": name},
        )
    raise ValueError(
        f"{kind.value} is not a header manipulation (header-identity, header-dates, header-device)"
    )


def uid_under(root: str, key: str) -> str:
    """A deterministic UID under ``root`` from ``key`` (at most 64 characters)."""
    digits = str(int(hashlib.sha256(key.encode()).hexdigest()[:24], 16))
    return f"{root}.{digits}"[:64].rstrip(".")
