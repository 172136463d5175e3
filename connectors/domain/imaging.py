"""DICOM studies as the rest of the code sees them: ``Study`` -> ``Series`` -> ``Instance``.

Built by `connectors.dicom.reader` from files (and later from DICOMweb metadata).
Attribute names follow the DICOM keywords in snake case (``StudyInstanceUID`` is
``study_instance_uid``). Headers are read eagerly; pixels are decoded only when
``Instance.pixels()`` is called, and come back in physical units: Hounsfield
units for CT (Modality LUT applied), MONOCHROME1 inverted so that higher always
means brighter, other modalities as stored values after the rescale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Equipment",
    "Instance",
    "PatientIdentity",
    "PixelLoader",
    "Series",
    "Study",
]

PixelLoader = Callable[[], NDArray[np.float32]]
"""Decodes one instance's pixels: (rows, columns) or (frames, rows, columns)."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class PatientIdentity:
    """The patient as the DICOM header names them (Patient module).

    ``name`` is the raw PN value (``FAMILY^GIVEN``); ``sex`` is M, F or O.
    """

    patient_id: str | None
    name: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    age: str | None = None  # PatientAge as written, e.g. "045Y"
    issuer: str | None = None
    other_ids: tuple[str, ...] = ()

    @property
    def family(self) -> str | None:
        if not self.name:
            return None
        return self.name.split("^")[0].strip() or None

    @property
    def given(self) -> tuple[str, ...]:
        if not self.name:
            return ()
        parts = self.name.split("^")
        if len(parts) < 2:
            return ()
        return tuple(p for p in parts[1].split(" ") if p)


@dataclass(frozen=True)
class Equipment:
    """General Equipment module: the device that wrote the series."""

    manufacturer: str | None = None
    model: str | None = None  # ManufacturerModelName
    serial_number: str | None = None  # DeviceSerialNumber
    station_name: str | None = None
    software_versions: tuple[str, ...] = ()
    institution_name: str | None = None


@dataclass(frozen=True)
class Instance:
    """One SOP instance: its identity, pixel geometry and how to decode it.

    ``acquisition`` holds the acquisition attributes present in the header by
    DICOM keyword (``KVP``, ``ExposureTime``, ``SliceThickness``,
    ``MagneticFieldStrength`` ...), so checks can ask which are missing.
    """

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None = None
    transfer_syntax_uid: str | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    samples_per_pixel: int = 1
    photometric_interpretation: str | None = None
    bits_allocated: int | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    window_center: float | None = None
    window_width: float | None = None
    image_type: tuple[str, ...] = ()
    acquisition_datetime: datetime | None = None
    content_datetime: datetime | None = None
    laterality: str | None = None  # ImageLaterality, else Laterality
    view_position: str | None = None
    acquisition: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    path: Path | None = None
    loader: PixelLoader | None = field(default=None, compare=False, repr=False)

    @property
    def has_pixels(self) -> bool:
        return self.loader is not None and self.rows > 0 and self.columns > 0

    @property
    def pixel_count(self) -> int:
        return self.rows * self.columns * self.number_of_frames * self.samples_per_pixel

    def pixels(self) -> NDArray[np.float32]:
        """Decode the pixels in physical units (see the module docstring)."""
        if self.loader is None:
            raise ValueError(f"instance {self.sop_instance_uid} has no pixel data to decode")
        return self.loader()


@dataclass(frozen=True)
class Series:
    """One series: modality, anatomy, the device, and its instances (sorted)."""

    series_instance_uid: str
    modality: str
    instances: tuple[Instance, ...]
    series_number: int | None = None
    description: str | None = None
    body_part_examined: str | None = None
    laterality: str | None = None
    view_position: str | None = None
    series_datetime: datetime | None = None
    equipment: Equipment = field(default_factory=Equipment)
    frame_of_reference_uid: str | None = None

    @property
    def frame_count(self) -> int:
        return sum(i.number_of_frames for i in self.instances)


@dataclass(frozen=True)
class Study:
    """One DICOM study with the patient identity its header carries."""

    study_instance_uid: str
    patient: PatientIdentity
    series: tuple[Series, ...]
    accession_number: str | None = None
    study_datetime: datetime | None = None
    study_id: str | None = None
    description: str | None = None
    referring_physician: str | None = None
    source: str | None = None  # folder or URL it was read from

    @property
    def modalities(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.series:
            seen.setdefault(s.modality, None)
        return tuple(seen)

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(i for s in self.series for i in s.instances)

    def primary_series(self) -> Series:
        """The image series a reader looks at first: the one with the most frames."""
        with_pixels = [s for s in self.series if any(i.has_pixels for i in s.instances)]
        candidates = with_pixels or list(self.series)
        if not candidates:
            raise ValueError(f"study {self.study_instance_uid} has no series")
        return max(candidates, key=lambda s: (s.frame_count, -(s.series_number or 0)))

    def decoding_once(self) -> Study:
        """This study with instances that decode their pixels once and keep them (as read-only
        arrays) as long as the returned study lives: for callers that look at the same frames
        several times (the model's preprocessing, the pixel check and the perceptual hash of a
        batch sweep). A decoding error is not kept: the next call tries again."""
        return replace(
            self,
            series=tuple(
                replace(s, instances=tuple(_decoding_once(i) for i in s.instances)) for s in self.series
            ),
        )


def _decoding_once(instance: Instance) -> Instance:
    loader = instance.loader
    if loader is None:
        return instance
    kept: list[NDArray[np.float32]] = []

    def load() -> NDArray[np.float32]:
        if not kept:
            pixels = loader()
            pixels.flags.writeable = False  # shared by every caller: nobody may change it
            kept.append(pixels)
        return kept[0]

    return replace(instance, loader=load)
