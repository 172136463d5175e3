"""Writing rendered studies as DICOM Part 10 files, the way the site's devices would.

One file per frame (a DX view, a CT or MR slice) under
``out_dir/<StudyInstanceUID>/``. Each device has a stable profile (from its
rank among the site's devices of its modality): DX devices differ in bit depth
(12 or 14), photometric interpretation (MONOCHROME1 devices store inverted
values) and transfer syntax (one writes JPEG-LS Lossless); CT stores HU + 1024
as unsigned 12-bit with RescaleIntercept -1024; MR stores unsigned 16-bit.
Acquisition attributes come from the study's protocol, the same one that drove
the rendering, so noise and technique agree.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
)

from fusion.cohort.images.protocol import Protocol, protocol_for
from fusion.cohort.images.series import RenderedSeries, RenderedStudy
from fusion.cohort.images.tamper import HeaderTamper, plan_tamper, uid_under
from fusion.cohort.scenario import Manipulation, PatientScenario, SimSite, StudyKind, StudyPlan

__all__ = ["DeviceProfile", "device_profile", "write_study"]

logger = logging.getLogger(__name__)

_SOP_CLASS = {"DX": DigitalXRayImageStorageForPresentation, "CT": CTImageStorage, "MR": MRImageStorage}
_DESCRIPTION = {
    StudyKind.CHEST_DX: "XR CHEST",
    StudyKind.CHEST_CT: "CT THORAX WITHOUT CONTRAST",
    StudyKind.BRAIN_MR: "MRI BRAIN T2",
}
_REFERRING = ("Meyer^Julia", "Osei^Kofi", "Laurent^Claire", "Ibrahim^Omar", "Becker^Paul", "Silva^Ana")


@dataclass(frozen=True)
class DeviceProfile:
    """How one device stores its pixels."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    transfer_syntax: str = ExplicitVRLittleEndian
    detector_type: str = "SCINTILLATOR"


def device_profile(plan: StudyPlan, site: SimSite) -> DeviceProfile:
    """The storage profile of the plan's device (by its rank among the site's devices of its modality)."""
    modality = StudyKind(plan.kind).modality
    serials = sorted(d.serial_number for d in site.devices_for(modality))
    serial = plan.device.serial_number
    rank = serials.index(serial) if serial in serials else zlib.crc32(serial.encode()) % 3
    if modality != "DX":
        return DeviceProfile()
    if rank % 3 == 1:
        return DeviceProfile("MONOCHROME1", 14, JPEGLSLossless, "DIRECT")
    if rank % 3 == 2:
        return DeviceProfile("MONOCHROME2", 14, ExplicitVRLittleEndian, "SCINTILLATOR")
    return DeviceProfile()


def _implementation_version(plan: StudyPlan) -> str:
    man = re.sub(r"[^A-Za-z0-9]", "", plan.device.manufacturer).upper()[:6] or "SIM"
    sw = plan.device.software_versions[0] if plan.device.software_versions else "1.0"
    sw = re.sub(r"[^A-Za-z0-9.]", "", sw)
    return f"{man}_{StudyKind(plan.kind).modality}_{sw}"[:16]


def _sop_uid(series_uid: str, index: int, root: str) -> str:
    uid = f"{series_uid}.{index + 1}"
    return uid if len(uid) <= 64 else uid_under(root, uid)


def _base_dataset(
    study: RenderedStudy,
    s: RenderedSeries,
    number: int,
    scenario: PatientScenario,
    site: SimSite,
    proto: Protocol,
    profile: DeviceProfile,
) -> Dataset:
    plan = study.plan
    modality = s.modality
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = cast(UID, f"{site.uid_root}.0.1")
    meta.ImplementationVersionName = _implementation_version(plan)
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = _SOP_CLASS[modality]
    when = plan.study_datetime
    acq = when + timedelta(minutes=2 + number)
    ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S")
    ds.AcquisitionDate, ds.AcquisitionTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S")
    ds.AccessionNumber = plan.accession_number
    ds.Modality = modality
    ds.Manufacturer = plan.device.manufacturer
    ds.InstitutionName = site.name
    ds.ReferringPhysicianName = _REFERRING[zlib.crc32(plan.accession_number.encode()) % len(_REFERRING)]
    ds.StationName = plan.device.station_name or ""
    ds.StudyDescription = _DESCRIPTION[StudyKind(plan.kind)]
    ds.SeriesDescription = {
        "DX": f"CHEST {s.view}",
        "CT": f"THORAX {proto.slice_thickness:g}mm {proto.kernel}",
        "MR": "T2 TSE AXIAL",
    }[modality]
    ds.ManufacturerModelName = plan.device.model
    ds.PatientName = f"{scenario.family}^{' '.join(scenario.given)}"
    ds.PatientID = scenario.mrn
    ds.PatientBirthDate = scenario.birth_date.strftime("%Y%m%d")
    ds.PatientSex = "M" if scenario.gender == "male" else "F"
    ds.PatientAge = f"{max(int(scenario.age_at(when.date())), 0):03d}Y"
    ds.PatientSize = f"{scenario.height_cm / 100:.2f}"
    ds.PatientWeight = f"{scenario.weight_kg:.1f}"
    ds.BodyPartExamined = StudyKind(plan.kind).body_part
    ds.DeviceSerialNumber = plan.device.serial_number
    ds.SoftwareVersions = list(plan.device.software_versions) or ["1.0"]
    ds.StudyInstanceUID = plan.study_instance_uid
    ds.SeriesInstanceUID = s.series_instance_uid
    ds.StudyID = plan.accession_number[-16:]
    ds.SeriesNumber = number
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns = int(s.frames.shape[1]), int(s.frames.shape[2])
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{s.pixel_spacing[0]:.6g}", f"{s.pixel_spacing[1]:.6g}"]
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PhotometricInterpretation = profile.photometric
        ds.BitsStored = profile.bits_stored
        ds.HighBit = profile.bits_stored - 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.ViewPosition = s.view or "PA"
        ds.ImageLaterality = "U"
        ds.PatientOrientation = ["A", "F"] if s.view == "LL" else ["L", "F"]
        ds.KVP = f"{proto.kvp:g}"
        ds.ExposureTime = round(proto.exposure_time_ms)
        ds.XRayTubeCurrent = round(proto.tube_current_ma)
        ds.Exposure = max(round(proto.tube_current_ma * proto.exposure_time_ms / 1000.0), 1)
        ds.DistanceSourceToDetector = f"{proto.sid_mm:g}"
        ds.DistanceSourceToPatient = f"{proto.sid_mm - 150.0:g}"
        ds.ImagerPixelSpacing = [f"{s.pixel_spacing[0]:.6g}", f"{s.pixel_spacing[1]:.6g}"]
        ds.DetectorType = profile.detector_type
    elif modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit = 12, 11
        ds.KVP = f"{proto.kvp:g}"
        ds.XRayTubeCurrent = round(proto.tube_current_ma)
        ds.ExposureTime = round(proto.exposure_time_ms)
        ds.SliceThickness = f"{proto.slice_thickness:g}"
        ds.ConvolutionKernel = proto.kernel
        ds.ReconstructionDiameter = f"{s.pixel_spacing[1] * s.frames.shape[2]:.1f}"
        ds.GantryDetectorTilt = "0"
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit = 16, 15
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", "FS"
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = f"{proto.echo_time:.1f}"
        ds.RepetitionTime = f"{proto.repetition_time:.0f}"
        ds.MagneticFieldStrength = f"{proto.field_strength:g}"
        ds.ImagingFrequency = f"{42.577478 * proto.field_strength:.6f}"
        ds.ImagedNucleus = "1H"
        ds.EchoTrainLength = 15
        ds.SliceThickness = f"{proto.slice_thickness:g}"
        ds.SpacingBetweenSlices = f"{proto.slice_spacing:g}"
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    if modality != "DX":
        ds.FrameOfReferenceUID = uid_under(site.uid_root, f"for|{plan.study_instance_uid}")
    return ds


# What changes from one frame of a series to the next (with a tamper or not); the
# rest of the dataset is encoded once per series.
_PER_FRAME = tuple(
    Tag(kw)
    for kw in (
        "SOPInstanceUID",
        "InstanceNumber",
        "ImagePositionPatient",
        "SliceLocation",
        "WindowCenter",
        "WindowWidth",
        "PixelData",
    )
)
_FAST_WRITE = True  # False: every file through ``Dataset.save_as`` (the reference the fast path matches)
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element_bytes(ds: Dataset, tag: BaseTag, encoding: str | list[str]) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_data_element(fp, ds.get_item(tag), encoding)
    return fp.getvalue()


class _SeriesEncoder:
    """Explicit VR little endian files of one series, byte for byte what
    ``ds.save_as(path, enforce_file_format=True)`` writes, with the attributes
    that do not change between frames encoded once."""

    def __init__(self) -> None:
        self._static: list[tuple[BaseTag, bytes]] | None = None
        self._encoding: str | list[str] = "iso8859"

    def encode(self, ds: Dataset) -> bytes:
        if self._static is None:
            correct_ambiguous_vr(ds, True)  # as write_dataset does for a dataset built in memory
            self._encoding = ds.get("SpecificCharacterSet", "iso8859")
            self._static = [
                (tag, _element_bytes(ds, tag, self._encoding))
                for tag in sorted(ds.keys())
                if tag not in _PER_FRAME and not (tag.element == 0 and tag.group > 6)
            ]
        ds["PixelData"].is_undefined_length = False
        parts = self._static + [(t, _element_bytes(ds, t, self._encoding)) for t in _PER_FRAME if t in ds]
        parts.sort(key=lambda part: part[0])
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = False, True
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        return b"".join([_PREAMBLE, meta.getvalue(), *(b for _, b in parts)])


def _stored(frame: np.ndarray, modality: str, profile: DeviceProfile) -> tuple[np.ndarray, float, float]:
    """Stored pixel values, with a window (centre, width) in stored units."""
    if modality == "CT":
        px = np.clip(np.rint(frame + 1024.0), 0, 4095).astype(np.uint16)
        return px, 40.0, 400.0
    if modality == "DX":
        top = (1 << profile.bits_stored) - 1
        scale = 4.0 if profile.bits_stored == 14 else 1.0
        px = np.clip(np.rint(frame * scale), 0, top).astype(np.uint16)
        if profile.photometric == "MONOCHROME1":
            px = (top - px).astype(np.uint16)
    else:
        px = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
    lo, hi = np.percentile(px[::8, ::8], [2, 98])
    return px, float((lo + hi) / 2), float(max(hi - lo, 1.0))


def write_study(
    study: RenderedStudy,
    scenario: PatientScenario,
    site: SimSite,
    out_dir: Path,
    *,
    header_tamper: Manipulation | None = None,
    seed: int = 0,
) -> Path:
    """Write one DICOM file per frame under ``out_dir/<StudyInstanceUID>/`` and return that folder."""
    plan = study.plan
    folder = Path(out_dir) / plan.study_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    proto = protocol_for(plan)
    if plan.kind is StudyKind.CHEST_CT and study.series:  # the FOV the renderer used
        s0 = study.series[0]
        proto = Protocol(**{**proto.__dict__, "fov_mm": s0.pixel_spacing[1] * s0.frames.shape[2]})
    profile = device_profile(plan, site)
    tamper: HeaderTamper | None = None
    if header_tamper is not None:
        tamper = plan_tamper(header_tamper, scenario, plan, site, StudyKind(plan.kind).modality, seed)
    for number, s in enumerate(study.series, start=1):
        ds = _base_dataset(study, s, number, scenario, site, proto, profile)
        fast = _FAST_WRITE and profile.transfer_syntax == ExplicitVRLittleEndian
        if fast and tamper is not None:
            tamper.apply(ds)  # the same on every frame, and on attributes no frame changes
        encoder = _SeriesEncoder()
        for i, frame in enumerate(s.frames):
            sop = _sop_uid(s.series_instance_uid, i, site.uid_root)
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = cast(UID, sop)
            ds.InstanceNumber = i + 1
            if s.slice_positions:
                z = s.slice_positions[i]
                x0 = -s.pixel_spacing[1] * s.frames.shape[2] / 2
                y0 = -s.pixel_spacing[0] * s.frames.shape[1] / 2
                ds.ImagePositionPatient = [f"{x0:.3f}", f"{y0:.3f}", f"{z:.3f}"]
                ds.SliceLocation = f"{z:.3f}"
            px, wc, ww = _stored(frame, s.modality, profile)
            if s.modality != "CT":
                ds.WindowCenter, ds.WindowWidth = f"{wc:.0f}", f"{ww:.0f}"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            if profile.transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(profile.transfer_syntax, px, generate_instance_uid=False)
            else:
                ds.PixelData = px.tobytes()
                ds["PixelData"].VR = "OW"
            path = folder / f"{number:02d}_{i + 1:04d}.dcm"
            if fast:
                path.write_bytes(encoder.encode(ds))
                continue
            if tamper is not None:
                tamper.apply(ds)
            ds.save_as(path, enforce_file_format=True)
    logger.debug("wrote study with %d series", len(study.series))
    return folder
