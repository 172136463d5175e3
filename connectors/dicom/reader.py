"""DICOM files and folders -> ``Study`` -> ``Series`` -> ``Instance``.

Headers are read eagerly with ``stop_before_pixels=True``; each ``Instance``
gets a ``loader`` that re-reads its file and decodes the pixels only when asked
(`connectors.dicom.pixels`). Before any decoding the reader checks each header
against `DicomLimits` and checks, for uncompressed transfer syntaxes, that the
file really holds the bytes ``Rows x Columns x frames`` needs, so truncated files
are caught at read time.

Grouping: instances by ``StudyInstanceUID`` (and ``PatientID``: instances that
share a StudyInstanceUID but name different patients become separate ``Study``
objects with the same UID, so the conflict stays visible), then by
``SeriesInstanceUID``; instances are sorted by ``InstanceNumber``, then by their
position along the slice normal (``ImagePositionPatient``).

Dates and times: every ``datetime`` is timezone-aware. DICOM dates and times are
local to the site; they are read in ``TimezoneOffsetFromUTC`` when the header
has one, else in ``assume_tz`` (UTC by default), then converted to UTC, the same
convention as `connectors.fhir.extract`.

Bad files in a folder are handled under ``strictness`` and listed in
`DicomReadResult.skipped`, so none is dropped silently.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from connectors.dicom.limits import DicomLimits
from connectors.dicom.pixels import load_pixels
from connectors.domain.imaging import Equipment, Instance, PatientIdentity, Series, Study
from connectors.errors import InvalidDicomInput, NoInputFound, PixelDataTooLarge
from connectors.strictness import Strictness

__all__ = [
    "ACQUISITION_KEYWORDS",
    "DicomReadResult",
    "SkippedFile",
    "read_dicom",
    "read_dicom_file",
    "read_dicom_folder",
]

logger = logging.getLogger(__name__)

ACQUISITION_KEYWORDS: tuple[str, ...] = (
    "KVP",
    "ExposureTime",
    "XRayTubeCurrent",
    "Exposure",
    "ExposureInuAs",
    "DistanceSourceToDetector",
    "DistanceSourceToPatient",
    "ImagerPixelSpacing",
    "DetectorType",
    "SliceThickness",
    "ConvolutionKernel",
    "ReconstructionDiameter",
    "GantryDetectorTilt",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "ScanningSequence",
    "SequenceVariant",
    "ImagingFrequency",
    "SpacingBetweenSlices",
    "FlipAngle",
    "ContrastBolusAgent",
    "AcquisitionDeviceProcessingDescription",
)
"""Acquisition attributes copied into ``Instance.acquisition`` when present and non-empty."""

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class SkippedFile:
    """A file the reader did not use, and why (no patient data in ``reason``)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DicomReadResult:
    """What `read_dicom_folder` found: the studies, and every file it skipped."""

    studies: tuple[Study, ...]
    skipped: tuple[SkippedFile, ...] = ()


@dataclass(frozen=True)
class _Header:
    ds: Dataset
    instance: Instance
    nbytes: int
    tz: tzinfo  # the zone the header's local dates and times are in


def read_dicom(
    path: str | os.PathLike[str],
    *,
    limits: DicomLimits | None = None,
    strictness: Strictness | str = Strictness.WARN,
    assume_tz: tzinfo = UTC,
) -> list[Study]:
    """Read a DICOM file or a folder (recursively) into studies.

    A single bad file raises (`InvalidDicomInput`, `PixelDataTooLarge`). In a
    folder, bad files are handled under ``strictness``; use `read_dicom_folder`
    to get the list of skipped files. A folder without any usable DICOM raises
    `NoInputFound`.
    """
    p = Path(path)
    if p.is_file():
        return list(read_dicom_file(p, limits=limits, assume_tz=assume_tz))
    return list(read_dicom_folder(p, limits=limits, strictness=strictness, assume_tz=assume_tz).studies)


def read_dicom_file(
    path: str | os.PathLike[str], *, limits: DicomLimits | None = None, assume_tz: tzinfo = UTC
) -> tuple[Study, ...]:
    """Read one DICOM file into its study; any problem raises."""
    p = Path(path)
    limits = limits or DicomLimits()
    header = _read_header(p, limits, assume_tz)
    studies = _group([header], limits, source=str(p), strictness=Strictness.RAISE, skipped=[])
    return tuple(studies)


def read_dicom_folder(
    path: str | os.PathLike[str],
    *,
    limits: DicomLimits | None = None,
    strictness: Strictness | str = Strictness.WARN,
    assume_tz: tzinfo = UTC,
) -> DicomReadResult:
    """Read every DICOM file under ``path`` (recursively, skipping DICOMDIR and dot-files).

    Under ``warn``/``ignore`` a bad file is skipped, logged and listed in
    ``skipped``; under ``raise`` it raises. A folder with no usable DICOM raises
    `NoInputFound` whatever the strictness.
    """
    root = Path(path)
    mode = Strictness.of(strictness)
    limits = limits or DicomLimits()
    if not root.exists():
        raise NoInputFound(f"{root}: no such file or folder")
    if not root.is_dir():
        raise NoInputFound(f"{root}: not a folder; use read_dicom_file for a single file")
    headers: list[_Header] = []
    skipped: list[SkippedFile] = []
    for file in _walk(root):
        try:
            headers.append(_read_header(file, limits, assume_tz))
        except (InvalidDicomInput, PixelDataTooLarge) as exc:
            skipped.append(SkippedFile(file, str(exc)))
            mode.handle(
                exc,
                logger,
                f"a file that is not usable DICOM ({type(exc).__name__}); see DicomReadResult.skipped",
            )
    studies = _group(headers, limits, source=str(root), strictness=mode, skipped=skipped)
    if not studies:
        detail = f"; {len(skipped)} file(s) skipped, first: {skipped[0].reason}" if skipped else ""
        raise NoInputFound(f"{root}: no readable DICOM images found{detail}")
    if skipped:
        logger.info("read %d studies, skipped %d file(s)", len(studies), len(skipped))
    return DicomReadResult(tuple(studies), tuple(skipped))


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.upper() == "DICOMDIR":
                logger.debug("skipping DICOMDIR %s", Path(dirpath, name))
                continue
            yield Path(dirpath, name)


# -- one file -------------------------------------------------------------------------------------


def _read_header(path: Path, limits: DicomLimits, assume_tz: tzinfo) -> _Header:
    source = str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False)
            pixel_pos = fp.tell()
            pixel_header = fp.read(12)
            fragments_ok = _encapsulated_complete(fp, pixel_pos, pixel_header, size)
    except InvalidDicomError as exc:
        raise InvalidDicomInput(
            f"{source}: not a DICOM file (no 'DICM' preamble / File Meta Information); "
            "if it is a raw DICOM dataset, rewrite it with a File Meta header"
        ) from exc
    except OSError as exc:
        raise InvalidDicomInput(f"{source}: cannot be read: {exc.strerror or exc}") from exc
    except (EOFError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise InvalidDicomInput(f"{source}: truncated or corrupt header: {exc}") from exc
    if not fragments_ok:
        raise InvalidDicomInput(f"{source}: truncated: the compressed pixel data is cut off mid-fragment")

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not _str(ds, keyword):
            raise InvalidDicomInput(f"{source}: has no {keyword}; every DICOM instance must have one")

    deflated = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "")) == _DEFLATED
    # a deflated file's stream position says nothing about the pixel data: trust Rows/Columns
    has_pixels = _pixel_tag(ds, pixel_header) is not None or (deflated and bool(ds.get("Rows")))
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    frames = max(_int(ds, "NumberOfFrames") or 1, 1)
    samples = max(_int(ds, "SamplesPerPixel") or 1, 1)
    bits = _int(ds, "BitsAllocated") or 16
    nbytes = 0
    if has_pixels:
        nbytes = limits.check_instance(
            rows=rows,
            columns=columns,
            frames=frames,
            samples_per_pixel=samples,
            bits_allocated=bits,
            source=source,
        )
        _check_pixel_length(ds, pixel_header, size - pixel_pos, nbytes, source)
    tz = _header_tz(ds, assume_tz)
    instance = _instance(ds, path, has_pixels, limits, tz)
    return _Header(ds, instance, nbytes, tz)


def _encapsulated_complete(fp: BinaryIO, pixel_pos: int, head: bytes, size: int) -> bool:
    """Walk the items of encapsulated pixel data by their lengths; False when the file ends mid-item.

    Only for the explicit-VR little-endian form that encapsulation requires;
    anything else is left to the decoder. Costs one seek per fragment.
    """
    if len(head) < 12 or head[:4] != b"\xe0\x7f\x10\x00" or head[8:12] != b"\xff\xff\xff\xff":
        return True
    fp.seek(pixel_pos + 12)
    while True:
        item = fp.read(8)
        if len(item) == 0:
            return True  # no sequence delimiter, but the last item is whole: tolerated
        if len(item) < 8:
            return False
        group, element, length = struct.unpack("<HHL", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            return True
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return True  # not the usual layout: the decoder will judge it
        end = fp.tell() + length
        if end > size:
            return False
        fp.seek(end)


def _pixel_tag(ds: Dataset, head: bytes) -> int | None:
    if len(head) < 8:
        return None
    little = _is_little_endian(ds)
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    tag = (group << 16) | element
    return tag if tag in _PIXEL_TAGS else None


def _is_little_endian(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", (None, None))
    return encoding[1] is not False


def _check_pixel_length(ds: Dataset, head: bytes, remaining: int, needed: int, source: str) -> None:
    """Catch truncated pixel data from the element header and the file size, without decoding."""
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if tsyntax == _DEFLATED or len(head) < 8:
        return  # the deflated stream's length cannot be checked without inflating it
    little = _is_little_endian(ds)
    # judge implicit/explicit from the bytes: some files contradict their transfer syntax
    implicit = not (head[4:6].isalpha() and head[4:6].isupper())
    fmt = "<" if little else ">"
    if implicit:
        (length,) = struct.unpack(fmt + "L", head[4:8])
        header_len = 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise InvalidDicomInput(f"{source}: truncated: the pixel data element header is cut off")
        (length,) = struct.unpack(fmt + "L", head[8:12])
        header_len = 12
    else:
        (length,) = struct.unpack(fmt + "H", head[6:8])
        header_len = 8
    available = remaining - header_len
    if length == 0xFFFFFFFF:  # encapsulated (compressed): frames are checked when decoded
        if available <= 0:
            raise InvalidDicomInput(f"{source}: truncated: the encapsulated pixel data is missing")
        return
    if available < length:
        raise InvalidDicomInput(
            f"{source}: truncated: the pixel data element declares {length} bytes but the file "
            f"holds only {max(available, 0)}"
        )
    ts = pydicom.uid.UID(tsyntax) if tsyntax else None
    if _str(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        needed = needed * 2 // 3  # chroma subsampled horizontally: 2 samples per pixel on average
    if (ts is None or not ts.is_compressed) and length < needed:
        raise InvalidDicomInput(
            f"{source}: truncated: pixel data is shorter than Rows x Columns x frames needs "
            f"({length} of {needed} bytes)"
        )


def _instance(ds: Dataset, path: Path, has_pixels: bool, limits: DicomLimits, tz: tzinfo) -> Instance:
    meta = getattr(ds, "file_meta", Dataset())
    laterality = _str(ds, "ImageLaterality") or _str(ds, "Laterality")
    acq_dt = _dt_value(ds.get("AcquisitionDateTime"), tz) or _datetime(
        ds, "AcquisitionDate", "AcquisitionTime", tz
    )
    return Instance(
        sop_instance_uid=_str(ds, "SOPInstanceUID") or "",
        sop_class_uid=_str(ds, "SOPClassUID") or _str(meta, "MediaStorageSOPClassUID") or "",
        instance_number=_int(ds, "InstanceNumber"),
        transfer_syntax_uid=_str(meta, "TransferSyntaxUID"),
        implementation_class_uid=_str(meta, "ImplementationClassUID"),
        implementation_version_name=_str(meta, "ImplementationVersionName"),
        rows=_int(ds, "Rows") or 0,
        columns=_int(ds, "Columns") or 0,
        number_of_frames=max(_int(ds, "NumberOfFrames") or 1, 1),
        samples_per_pixel=max(_int(ds, "SamplesPerPixel") or 1, 1),
        photometric_interpretation=_str(ds, "PhotometricInterpretation"),
        bits_allocated=_int(ds, "BitsAllocated"),
        bits_stored=_int(ds, "BitsStored"),
        pixel_representation=_int(ds, "PixelRepresentation"),
        pixel_spacing=_pair(_functional(ds, "PixelSpacing", "PixelMeasuresSequence")),
        slice_thickness=_float(_functional(ds, "SliceThickness", "PixelMeasuresSequence")),
        image_position=_triple(_functional(ds, "ImagePositionPatient", "PlanePositionSequence")),
        image_orientation=_floats(_functional(ds, "ImageOrientationPatient", "PlaneOrientationSequence")),
        rescale_slope=_float(_functional(ds, "RescaleSlope", "PixelValueTransformationSequence")),
        rescale_intercept=_float(_functional(ds, "RescaleIntercept", "PixelValueTransformationSequence")),
        window_center=_float(_functional(ds, "WindowCenter", "FrameVOILUTSequence")),
        window_width=_float(_functional(ds, "WindowWidth", "FrameVOILUTSequence")),
        image_type=tuple(str(v) for v in _multi(ds.get("ImageType"))),
        acquisition_datetime=acq_dt,
        content_datetime=_datetime(ds, "ContentDate", "ContentTime", tz),
        laterality=laterality,
        view_position=_str(ds, "ViewPosition"),
        acquisition=MappingProxyType(_acquisition(ds)),
        path=path,
        loader=partial(load_pixels, path, limits=limits) if has_pixels else None,
    )


def _acquisition(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in ACQUISITION_KEYWORDS:
        value = _plain(ds.get(keyword))
        if value is not None and value != "" and value != ():
            out[keyword] = value
    return out


# -- grouping -------------------------------------------------------------------------------------


def _group(
    headers: Iterable[_Header],
    limits: DicomLimits,
    *,
    source: str,
    strictness: Strictness,
    skipped: list[SkippedFile],
) -> list[Study]:
    by_study: dict[tuple[str, str], dict[str, list[_Header]]] = {}
    for h in headers:
        key = (_str(h.ds, "StudyInstanceUID") or "", _str(h.ds, "PatientID") or "")
        by_study.setdefault(key, {}).setdefault(_str(h.ds, "SeriesInstanceUID") or "", []).append(h)
    uids = [uid for uid, _ in by_study]
    for uid in sorted({u for u in uids if uids.count(u) > 1}):
        logger.warning("a study's instances name %d different patients; kept apart", uids.count(uid))
        logger.debug("study %s: instances name %d different patients", uid, uids.count(uid))

    studies: list[Study] = []
    for (study_uid, _), series_map in sorted(by_study.items()):
        members = [h for hs in series_map.values() for h in hs]
        total = sum(h.nbytes for h in members)
        try:
            limits.check_study(total, study_instance_uid=study_uid)
        except PixelDataTooLarge as exc:
            skipped.extend(SkippedFile(h.instance.path or Path(source), str(exc)) for h in members)
            strictness.handle(exc, logger, "a study over DicomLimits.max_bytes_per_study")
            continue
        series = tuple(
            sorted(
                (_series(uid, hs, limits) for uid, hs in series_map.items()),
                key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid),
            )
        )
        first = min(members, key=lambda h: h.instance.path or Path())
        studies.append(_study(study_uid, first.ds, series, source, members))
    return studies


def _series(uid: str, headers: list[_Header], limits: DicomLimits) -> Series:
    ordered = sorted(headers, key=_instance_order)
    ds = ordered[0].ds
    instances = tuple(h.instance for h in ordered)
    return Series(
        series_instance_uid=uid,
        modality=_str(ds, "Modality") or "OT",
        instances=instances,
        series_number=_int(ds, "SeriesNumber"),
        description=_str(ds, "SeriesDescription"),
        body_part_examined=_str(ds, "BodyPartExamined"),
        laterality=_str(ds, "Laterality") or next((i.laterality for i in instances if i.laterality), None),
        view_position=next((i.view_position for i in instances if i.view_position), None),
        series_datetime=_datetime(ds, "SeriesDate", "SeriesTime", ordered[0].tz),
        equipment=Equipment(
            manufacturer=_str(ds, "Manufacturer"),
            model=_str(ds, "ManufacturerModelName"),
            serial_number=_str(ds, "DeviceSerialNumber"),
            station_name=_str(ds, "StationName"),
            software_versions=tuple(str(v) for v in _multi(ds.get("SoftwareVersions")) if str(v)),
            institution_name=_str(ds, "InstitutionName"),
        ),
        frame_of_reference_uid=_str(ds, "FrameOfReferenceUID"),
    )


def _instance_order(h: _Header) -> tuple[Any, ...]:
    inst = h.instance
    position = 0.0
    if inst.image_position is not None and inst.image_orientation and len(inst.image_orientation) == 6:
        r, c = inst.image_orientation[:3], inst.image_orientation[3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        position = sum(p * n for p, n in zip(inst.image_position, normal, strict=True))
    elif inst.image_position is not None:
        position = inst.image_position[2]
    number = inst.instance_number
    return (number is None, number or 0, position, inst.sop_instance_uid)


def _study(uid: str, ds: Dataset, series: tuple[Series, ...], source: str, members: list[_Header]) -> Study:
    tz = members[0].tz
    other_ids = [str(v) for v in _multi(ds.get("OtherPatientIDs")) if str(v)]
    for item in ds.get("OtherPatientIDsSequence") or []:
        if _str(item, "PatientID"):
            other_ids.append(_str(item, "PatientID") or "")
    patient = PatientIdentity(
        patient_id=_str(ds, "PatientID"),
        name=_str(ds, "PatientName"),
        birth_date=_date(ds.get("PatientBirthDate")),
        sex=_str(ds, "PatientSex"),
        age=_str(ds, "PatientAge"),
        issuer=_str(ds, "IssuerOfPatientID"),
        other_ids=tuple(other_ids),
    )
    return Study(
        study_instance_uid=uid,
        patient=patient,
        series=series,
        accession_number=_str(ds, "AccessionNumber"),
        study_datetime=_datetime(ds, "StudyDate", "StudyTime", tz),
        study_id=_str(ds, "StudyID"),
        description=_str(ds, "StudyDescription"),
        referring_physician=_str(ds, "ReferringPhysicianName"),
        source=source,
    )


# -- value conversion -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """pydicom values as plain Python: DS -> float, IS -> int, multi-values -> tuples."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return None
    if isinstance(value, Dataset) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return None
    text = str(value).strip()
    return text or None


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None


def _pair(value: Any) -> tuple[float, float] | None:
    floats = _floats(value)
    return (floats[0], floats[1]) if floats and len(floats) >= 2 else None


def _triple(value: Any) -> tuple[float, float, float] | None:
    floats = _floats(value)
    return (floats[0], floats[1], floats[2]) if floats and len(floats) >= 3 else None


def _multi(value: Any) -> tuple[Any, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, MultiValue | list | tuple):
        return tuple(value)
    return (value,)


def _functional(ds: Dataset, keyword: str, group_sequence: str) -> Any:
    """``keyword`` at the top level, else from the (shared, then first per-frame) functional groups."""
    if keyword in ds and ds.get(keyword) not in (None, ""):
        return ds.get(keyword)
    for fg in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(fg)
        if not groups:
            continue
        seq = groups[0].get(group_sequence)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _header_tz(ds: Dataset, assume: tzinfo) -> tzinfo:
    offset = _str(ds, "TimezoneOffsetFromUTC")
    if offset and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        return timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    return assume


def _date(value: Any) -> date | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = DA(text)
    except (TypeError, ValueError):
        return None
    return date(parsed.year, parsed.month, parsed.day) if parsed is not None else None


def _datetime(ds: Dataset, date_kw: str, time_kw: str, tz: tzinfo) -> datetime | None:
    """DA + TM read in ``tz``, returned in UTC; a missing time is midnight."""
    day = _date(ds.get(date_kw))
    if day is None:
        return None
    text = str(ds.get(time_kw) or "").strip()
    clock = time()
    if text:
        try:
            parsed = TM(text)
            if parsed is not None:
                clock = time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)
        except (TypeError, ValueError):
            logger.debug("unparseable %s in %s", time_kw, ds.get("SOPInstanceUID"))
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def _dt_value(value: Any, tz: tzinfo) -> datetime | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = DT(text)
    except (TypeError, ValueError):
        return None
    if parsed is None:
        return None
    result = datetime(
        parsed.year,
        parsed.month,
        parsed.day,
        parsed.hour,
        parsed.minute,
        parsed.second,
        parsed.microsecond,
        tzinfo=parsed.tzinfo or tz,
    )
    return result.astimezone(UTC)
