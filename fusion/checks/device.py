"""Device checks: was the study written by a device this site owns?

- ``device.unknown``: the series' Manufacturer / ManufacturerModelName /
  DeviceSerialNumber is not one of ``ctx.site.devices`` (compared without case
  or surrounding spaces); ``device.modality-mismatch`` when a known device
  wrote another modality than it has.
- ``device.not-in-record``: the FHIR ImagingStudy names its performing Devices
  and this one is not among them.
- ``device.uid-root-foreign``: StudyInstanceUID, SeriesInstanceUID or
  SOPInstanceUID not under any of the site's UID roots (critical if none is).
- ``device.written-by-toolkit``: an acquisition-modality image whose
  ImplementationClassUID / ImplementationVersionName, or whose own UIDs, come
  from a general-purpose DICOM toolkit. A PACS or anonymiser may legitimately
  rewrite files, so this is a warning, and critical only when the acquisition
  attributes the modality always writes are missing too.
- ``device.acquisition-attributes-missing``: those attributes (KVP, exposure,
  echo time ...) absent.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.domain import Case, DeviceRecord, Equipment, Instance, Series
from fusion.checks.context import CheckContext
from fusion.checks.order import IMAGE_MODALITIES
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "ACQUISITION_MODALITIES",
    "REQUIRED_ACQUISITION_ATTRIBUTES",
    "TOOLKIT_UID_ROOTS",
    "TOOLKIT_VERSION_NAMES",
    "check_acquisition_attributes",
    "check_device_in_record",
    "check_device_known",
    "check_uid_roots",
    "check_written_by_toolkit",
    "missing_acquisition_attributes",
    "toolkit_for_uid",
    "uid_under",
]

ACQUISITION_MODALITIES = frozenset({"CT", "MR", "DX", "CR", "MG", "US", "XA", "RF", "PT", "NM", "IO", "PX"})

TOOLKIT_UID_ROOTS: tuple[tuple[str, str], ...] = (
    ("1.2.826.0.1.3680043.8.498", "pydicom"),  # also highdicom, which uses pydicom's root
    ("1.2.826.0.1.3680043.9.3811", "pynetdicom"),
    ("1.2.276.0.7230010.3", "DCMTK"),  # also Orthanc, which writes with DCMTK
    ("1.2.826.0.1.3680043.2.1143", "GDCM"),
    ("1.2.826.0.1.3680043.2.1125", "ITK/SimpleITK"),
    ("1.2.40.0.13.1", "dcm4che"),
    ("1.3.6.1.4.1.30071.8", "fo-dicom"),
    ("1.3.6.1.4.1.5962", "dicom3tools"),
    ("1.3.6.1.4.1.9590.100.1", "MATLAB"),
)
"""UID roots of general-purpose toolkits (ImplementationClassUID, and UIDs they generate)."""

TOOLKIT_VERSION_NAMES: tuple[tuple[str, str], ...] = (
    ("PYDICOM", "pydicom"),
    ("PYNETDICOM", "pynetdicom"),
    ("OFFIS_DCMTK", "DCMTK"),
    ("DCMTK", "DCMTK"),
    ("GDCM", "GDCM"),
    ("ITK", "ITK/SimpleITK"),
    ("DCM4CHE", "dcm4che"),
    ("FO-DICOM", "fo-dicom"),
    ("FODICOM", "fo-dicom"),
    ("ORTHANC", "DCMTK"),
)
"""ImplementationVersionName prefixes (upper case) of the same toolkits."""

REQUIRED_ACQUISITION_ATTRIBUTES: dict[str, tuple[tuple[str, ...], ...]] = {
    "DX": (
        ("KVP",),
        ("ExposureTime", "Exposure", "ExposureInuAs", "ExposureTimeInuS"),
        ("DistanceSourceToDetector",),
    ),
    "CT": (
        ("KVP",),
        ("XRayTubeCurrent", "Exposure", "XRayTubeCurrentInmA", "ExposureInmAs"),
        ("SliceThickness",),
        ("ConvolutionKernel",),
    ),
    "MR": (("MagneticFieldStrength",), ("EchoTime",), ("RepetitionTime",)),
}
"""Per modality, groups of keywords of which at least one must be present."""


def uid_under(uid: str, root: str) -> bool:
    """Whether ``uid`` lies under the UID root ``root`` (component-wise, not string prefix)."""
    root = root.rstrip(".")
    return uid == root or uid.startswith(root + ".")


def toolkit_for_uid(uid: str | None) -> str | None:
    """The toolkit whose root ``uid`` lies under, if any."""
    if not uid:
        return None
    return next((name for root, name in TOOLKIT_UID_ROOTS if uid_under(uid, root)), None)


def _toolkit_for_version(name: str | None) -> str | None:
    if not name:
        return None
    upper = name.strip().upper()
    return next((tk for prefix, tk in TOOLKIT_VERSION_NAMES if upper.startswith(prefix)), None)


def _norm(value: str | None) -> str:
    return (value or "").strip().casefold()


def _image_series(case: Case) -> list[Series]:
    return [s for s in case.study.series if s.modality.upper() in IMAGE_MODALITIES]


def _equipment_evidence(series: Series) -> tuple[Evidence, ...]:
    eq = series.equipment
    uid = series.series_instance_uid
    return (
        Evidence("dicom", "Manufacturer", eq.manufacturer, uid=uid),
        Evidence("dicom", "ManufacturerModelName", eq.model, uid=uid),
        Evidence("dicom", "DeviceSerialNumber", eq.serial_number, uid=uid),
    )


def _same_device(eq: Equipment, manufacturer: str | None, model: str | None, serial: str | None) -> bool:
    """Manufacturer and model must match; serial numbers too when both sides have one."""
    if _norm(eq.manufacturer) != _norm(manufacturer) or _norm(eq.model) != _norm(model):
        return False
    return not (eq.serial_number and serial) or _norm(eq.serial_number) == _norm(serial)


def check_device_known(case: Case, ctx: CheckContext) -> list[Finding]:
    """Each image series must come from a device in ``ctx.site.devices``."""
    if ctx.site is None or not ctx.site.devices:
        return []
    findings = []
    for s in _image_series(case):
        eq = s.equipment
        if not (eq.manufacturer or eq.model or eq.serial_number):
            findings.append(
                Finding(
                    "device.unidentified",
                    Severity.WARNING,
                    f"A {s.modality} series does not say which device acquired it.",
                    _equipment_evidence(s),
                )
            )
            continue
        matches = [
            d
            for d in ctx.site.devices
            if _norm(d.manufacturer) == _norm(eq.manufacturer)
            and _norm(d.model) == _norm(eq.model)
            and _norm(d.serial_number) == _norm(eq.serial_number)
        ]
        if not matches:
            findings.append(
                Finding(
                    "device.unknown",
                    Severity.CRITICAL,
                    f"A {s.modality} series was acquired on a device this site does not own.",
                    (*_equipment_evidence(s), Evidence("value", "site", ctx.site.name)),
                )
            )
        elif all(_norm(d.modality) != _norm(s.modality) for d in matches):
            findings.append(
                Finding(
                    "device.modality-mismatch",
                    Severity.CRITICAL,
                    f"A {s.modality} series names a site device that is a {matches[0].modality} device.",
                    (*_equipment_evidence(s), Evidence("value", "site-device-modality", matches[0].modality)),
                )
            )
    return findings


def _record_devices(case: Case) -> list[DeviceRecord]:
    if case.record is None or case.imaging_study is None or not case.imaging_study.device_ids:
        return []
    wanted = set(case.imaging_study.device_ids)
    return [d for d in case.record.devices if d.id in wanted]


def check_device_in_record(case: Case, ctx: CheckContext) -> list[Finding]:
    """The series' device should be one of the ImagingStudy's performer Devices."""
    devices = _record_devices(case)
    if not devices or case.imaging_study is None:
        return []
    findings = []
    for s in _image_series(case):
        eq = s.equipment
        if not (eq.manufacturer or eq.model):
            continue
        if any(_same_device(eq, d.manufacturer, d.model, d.serial_number) for d in devices):
            continue
        findings.append(
            Finding(
                "device.not-in-record",
                Severity.WARNING,
                f"The device that acquired a {s.modality} series is not one the EHR's ImagingStudy names.",
                (
                    *_equipment_evidence(s),
                    Evidence(
                        "fhir", f"ImagingStudy/{case.imaging_study.id}", [f"Device/{d.id}" for d in devices]
                    ),
                ),
            )
        )
    return findings


def check_uid_roots(case: Case, ctx: CheckContext) -> list[Finding]:
    """Study, series and SOP instance UIDs must lie under one of the site's UID roots."""
    if ctx.site is None or not ctx.site.uid_roots:
        return []
    roots = ctx.site.uid_roots
    uids = [("StudyInstanceUID", case.study_instance_uid)]
    for s in case.study.series:
        uids.append(("SeriesInstanceUID", s.series_instance_uid))
        uids.extend(("SOPInstanceUID", i.sop_instance_uid) for i in s.instances)
    foreign = [(k, u) for k, u in uids if not any(uid_under(u, r) for r in roots)]
    if not foreign:
        return []
    every = len(foreign) == len(uids)
    return [
        Finding(
            "device.uid-root-foreign",
            Severity.CRITICAL if every else Severity.WARNING,
            ("None of the study's UIDs" if every else f"{len(foreign)} of the study's {len(uids)} UIDs")
            + " were issued under this site's UID roots.",
            (
                *(Evidence("dicom", k, toolkit_for_uid(u), uid=u) for k, u in foreign[:5]),
                Evidence("value", "foreign-uids", len(foreign)),
                Evidence("value", "site-uid-roots", list(roots)),
            ),
        )
    ]


def missing_acquisition_attributes(modality: str, instances: Iterable[Instance]) -> dict[str, int]:
    """For each required attribute group (joined with "|") missing in some instance: how many lack it."""
    groups = REQUIRED_ACQUISITION_ATTRIBUTES.get(modality.upper(), ())
    missing: dict[str, int] = {}
    for inst in instances:
        present = {k for k, v in inst.acquisition.items() if v is not None and v != ""}
        if inst.slice_thickness is not None:
            present.add("SliceThickness")
        for group in groups:
            if not present.intersection(group):
                key = "|".join(group)
                missing[key] = missing.get(key, 0) + 1
    return missing


def check_acquisition_attributes(case: Case, ctx: CheckContext) -> list[Finding]:
    """DX, CT and MR images must carry the acquisition attributes every such device writes."""
    findings = []
    for s in case.study.series:
        missing = missing_acquisition_attributes(s.modality, s.instances)
        if not missing:
            continue
        names = ", ".join(k.split("|")[0] for k in missing)
        findings.append(
            Finding(
                "device.acquisition-attributes-missing",
                Severity.WARNING,
                f"A {s.modality} series lacks acquisition attributes its modality always records: {names}.",
                (
                    *(Evidence("dicom", k, n, uid=s.series_instance_uid) for k, n in missing.items()),
                    Evidence("value", "instances", len(s.instances)),
                ),
            )
        )
    return findings


def check_written_by_toolkit(case: Case, ctx: CheckContext) -> list[Finding]:
    """Acquisition images written (or given UIDs) by a general-purpose DICOM toolkit."""
    findings = []
    for s in case.study.series:
        if s.modality.upper() not in ACQUISITION_MODALITIES:
            continue
        evidence: list[Evidence] = []
        toolkits: dict[str, None] = {}
        for inst in s.instances:
            for keyword, value, tk in (
                (
                    "ImplementationClassUID",
                    inst.implementation_class_uid,
                    toolkit_for_uid(inst.implementation_class_uid),
                ),
                (
                    "ImplementationVersionName",
                    inst.implementation_version_name,
                    _toolkit_for_version(inst.implementation_version_name),
                ),
                ("SOPInstanceUID", inst.sop_instance_uid, toolkit_for_uid(inst.sop_instance_uid)),
            ):
                if tk is not None:
                    toolkits.setdefault(tk, None)
                    if len(evidence) < 6:
                        evidence.append(Evidence("dicom", keyword, value, uid=inst.sop_instance_uid))
        for keyword, value in (
            ("SeriesInstanceUID", s.series_instance_uid),
            ("StudyInstanceUID", case.study_instance_uid),
        ):
            tk = toolkit_for_uid(value)
            if tk is not None:
                toolkits.setdefault(tk, None)
                evidence.append(Evidence("dicom", keyword, value, uid=value))
        if not toolkits:
            continue
        missing = missing_acquisition_attributes(s.modality, s.instances)
        names = " / ".join(toolkits)
        message = (
            f"A {s.modality} series was written by a general-purpose DICOM toolkit ({names}), not the scanner"
        )
        if missing:
            message += ", and lacks the acquisition attributes a scanner records."
        else:
            message += "; a PACS or anonymiser may have rewritten it."
        findings.append(
            Finding(
                "device.written-by-toolkit",
                Severity.CRITICAL if missing else Severity.WARNING,
                message,
                (
                    *evidence,
                    Evidence("value", "toolkit", list(toolkits)),
                    *(Evidence("value", "missing-acquisition-attribute", k) for k in missing),
                ),
            )
        )
    return findings
