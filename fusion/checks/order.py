"""Order checks: is the study the examination that was ordered and reported?

The modality and body part are read from the ServiceRequest's (and the
DiagnosticReport's) code: first from a small table of LOINC imaging codes, else
from the display text ("XR Chest 2 Views", "CT chest", "MR brain"). A code the
table does not know and whose text says nothing gives no finding. Laterality
comes from the order's bodySite (SNOMED CT laterality qualifiers, or the words
"right"/"left") and is compared with ImageLaterality/Laterality.

The FHIR ImagingStudy (the EHR's copy of the study) must list the same
modalities and StudyInstanceUID as the DICOM study.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from connectors.domain import Case, Coding
from fusion.checks.context import CheckContext
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "IMAGE_MODALITIES",
    "LOINC_IMAGING",
    "ExpectedExam",
    "check_imaging_study",
    "check_laterality",
    "check_order_body_part",
    "check_order_missing",
    "check_order_modality",
    "expected_exam",
]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

LOINC_IMAGING: dict[str, tuple[str, str]] = {
    "36643-5": ("DX", "CHEST"),  # XR Chest 2 Views
    "30746-2": ("DX", "CHEST"),  # XR Chest Views
    "36554-4": ("DX", "CHEST"),  # XR Chest Single view
    "24648-8": ("DX", "CHEST"),  # XR Chest PA upright
    "24627-2": ("CT", "CHEST"),  # CT Chest
    "24590-2": ("MR", "HEAD"),  # MR Brain
}
"""LOINC imaging code -> (modality, body part); DX stands for projection radiography (DX or CR)."""

IMAGE_MODALITIES = frozenset(
    {"CT", "MR", "DX", "CR", "MG", "US", "XA", "RF", "PT", "NM", "IO", "PX", "OT", "RG", "DR"}
)
"""Modalities that carry images (not SR, PR, KO, SEG, REG, DOC ...)."""

# Equivalence classes: X-ray projection modalities, and body part synonyms.
_MODALITY_CLASS = {"DX": "XR", "CR": "XR", "DR": "XR", "RG": "XR"}
_BODY_PART_CLASS = {
    "CHEST": "CHEST", "THORAX": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST",
    "HEAD": "HEAD", "BRAIN": "HEAD", "SKULL": "HEAD",
    "ABDOMEN": "ABDOMEN", "PELVIS": "PELVIS", "KNEE": "KNEE", "HAND": "HAND",
    "SPINE": "SPINE", "CSPINE": "SPINE", "TSPINE": "SPINE", "LSPINE": "SPINE",
}  # fmt: skip
_TEXT_MODALITY = [
    (re.compile(r"\b(xr|x-ray|xray|radiograph\w*|cxr)\b", re.I), "DX"),
    (re.compile(r"\b(ct|cat scan|computed tomography)\b", re.I), "CT"),
    (re.compile(r"\b(mr|mri|magnetic resonance)\b", re.I), "MR"),
    (re.compile(r"\b(us|ultrasound|sonograph\w*)\b", re.I), "US"),
    (re.compile(r"\b(mammo\w*|mg)\b", re.I), "MG"),
]
_TEXT_BODY_PART = [
    (re.compile(r"\b(chest|thorax|thoracic|lungs?|cxr)\b", re.I), "CHEST"),
    (re.compile(r"\b(brain|head|skull|cranial)\b", re.I), "HEAD"),
    (re.compile(r"\b(abdomen|abdominal)\b", re.I), "ABDOMEN"),
    (re.compile(r"\bknee\b", re.I), "KNEE"),
    (re.compile(r"\bhand\b", re.I), "HAND"),
]
_RIGHT, _LEFT, _BILATERAL = "24028007", "7771000", "51440002"
_SIDE_WORDS = [(re.compile(r"\bright\b", re.I), "R"), (re.compile(r"\bleft\b", re.I), "L")]


@dataclass(frozen=True)
class ExpectedExam:
    """What a set of codings asks for; ``None`` where it does not say."""

    modality: str | None
    body_part: str | None
    source: str  # "loinc" or "text"


def _modality_class(modality: str) -> str:
    return _MODALITY_CLASS.get(modality.upper(), modality.upper())


def _body_part_class(body_part: str) -> str:
    key = re.sub(r"[^A-Z]", "", body_part.upper())
    return _BODY_PART_CLASS.get(key, key)


def expected_exam(codes: Iterable[Coding], text: str | None = None) -> ExpectedExam | None:
    """The modality and body part a ServiceRequest or DiagnosticReport code describes."""
    codes = tuple(codes)
    for c in codes:
        if c.system == LOINC and c.code in LOINC_IMAGING:
            return ExpectedExam(*LOINC_IMAGING[c.code], "loinc")
    texts = [c.display for c in codes if c.display] + ([text] if text else [])
    modality: str | None = None
    body_part: str | None = None
    for t in texts:
        modality = modality or next((m for rx, m in _TEXT_MODALITY if rx.search(t)), None)
        body_part = body_part or next((b for rx, b in _TEXT_BODY_PART if rx.search(t)), None)
    if modality is None and body_part is None:
        return None
    return ExpectedExam(modality, body_part, "text")


def _image_modalities(case: Case) -> set[str]:
    return {m.upper() for m in case.study.modalities if m.upper() in IMAGE_MODALITIES}


def _sources(case: Case) -> list[tuple[str, str, ExpectedExam]]:
    """(code prefix, FHIR reference, expectation) for the order and the report."""
    out = []
    if case.order is not None:
        exp = expected_exam(case.order.codes, case.order.text)
        if exp is not None:
            out.append(("order", f"ServiceRequest/{case.order.id}", exp))
    if case.report is not None:
        exp = expected_exam(case.report.codes)
        if exp is not None:
            out.append(("order.report", f"DiagnosticReport/{case.report.id}", exp))
    return out


def check_order_modality(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study's image modalities must include the one the order (and report) names."""
    actual = _image_modalities(case)
    if not actual:
        return []
    findings = []
    for prefix, ref, exp in _sources(case):
        if exp.modality is None or _modality_class(exp.modality) in {_modality_class(m) for m in actual}:
            continue
        what = "imaging order" if prefix == "order" else "radiology report"
        findings.append(
            Finding(
                "order.modality-mismatch" if prefix == "order" else "order.report-modality-mismatch",
                Severity.CRITICAL,
                f"The {what} is for {exp.modality} "
                f"but the study contains {', '.join(sorted(actual))} images.",
                (
                    Evidence("fhir", ref, exp.modality),
                    Evidence("dicom", "Modality", sorted(actual), uid=case.study_instance_uid),
                ),
            )
        )
    return findings


def check_order_body_part(case: Case, ctx: CheckContext) -> list[Finding]:
    """BodyPartExamined should be the body part the order (and report) names.

    A warning only: BodyPartExamined is optional and often left generic.
    """
    actual = {
        s.body_part_examined.upper(): s.series_instance_uid
        for s in case.study.series
        if s.body_part_examined and s.modality.upper() in IMAGE_MODALITIES
    }
    if not actual:
        return []
    actual_classes = {_body_part_class(b) for b in actual}
    findings = []
    for prefix, ref, exp in _sources(case):
        if exp.body_part is None or _body_part_class(exp.body_part) in actual_classes:
            continue
        what = "imaging order" if prefix == "order" else "radiology report"
        findings.append(
            Finding(
                "order.body-part-mismatch" if prefix == "order" else "order.report-body-part-mismatch",
                Severity.WARNING,
                f"The {what} is for the {exp.body_part.lower()} but the images are labelled "
                f"{', '.join(sorted(b.lower() for b in actual))}.",
                (
                    Evidence("fhir", ref, exp.body_part),
                    *(Evidence("dicom", "BodyPartExamined", b, uid=u) for b, u in sorted(actual.items())),
                ),
            )
        )
    return findings


def _ordered_side(case: Case) -> str | None:
    """R, L, B (bilateral) or ``None`` from the order's bodySite, code display or text."""
    if case.order is None:
        return None
    for c in case.order.body_site:
        if c.system == SNOMED and c.code in {_RIGHT, _LEFT, _BILATERAL}:
            return {_RIGHT: "R", _LEFT: "L", _BILATERAL: "B"}[c.code]
    texts = [c.display or "" for c in (*case.order.body_site, *case.order.codes)] + [case.order.text or ""]
    sides = {side for t in texts for rx, side in _SIDE_WORDS if rx.search(t)}
    if re.search(r"\bbilateral\b", " ".join(texts), re.I) or sides == {"R", "L"}:
        return "B"
    return next(iter(sides)) if sides else None


def check_laterality(case: Case, ctx: CheckContext) -> list[Finding]:
    """ImageLaterality/Laterality must not name the other side than the order."""
    ordered = _ordered_side(case)
    if ordered not in {"R", "L"} or case.order is None:
        return []
    wrong = []
    for s in case.study.series:
        sides = {(i.laterality or "").upper(): i.sop_instance_uid for i in s.instances if i.laterality}
        if s.laterality:
            sides.setdefault(s.laterality.upper(), s.series_instance_uid)
        for side, uid in sides.items():
            if side in {"R", "L"} and side != ordered:
                wrong.append(Evidence("dicom", "ImageLaterality", side, uid=uid))
    if not wrong:
        return []
    names = {"R": "right", "L": "left"}
    return [
        Finding(
            "order.laterality-mismatch",
            Severity.CRITICAL,
            f"The order is for the {names[ordered]} side but {len(wrong)} image(s) are labelled "
            f"{names['L' if ordered == 'R' else 'R']}.",
            (Evidence("fhir", f"ServiceRequest/{case.order.id}", ordered), *wrong[:5]),
        )
    ]


def check_order_missing(case: Case, ctx: CheckContext) -> list[Finding]:
    """A study in a patient's record should have an imaging order (ServiceRequest)."""
    if case.record is None or case.order is not None:
        return []
    acc = case.study.accession_number
    if acc and any(o.accession_number == acc for o in case.record.orders):
        return []  # the order exists; the link simply did not attach it
    return [
        Finding(
            "order.missing",
            Severity.WARNING,
            "No imaging order was found in the patient's record for this study.",
            (
                Evidence("dicom", "AccessionNumber", acc, uid=case.study_instance_uid),
                Evidence("fhir", f"Patient/{case.record.patient.id}", len(case.record.orders)),
            ),
        )
    ]


def check_imaging_study(case: Case, ctx: CheckContext) -> list[Finding]:
    """The FHIR ImagingStudy must describe this DICOM study: its UID and its modalities."""
    ims = case.imaging_study
    if ims is None:
        return []
    ref = f"ImagingStudy/{ims.id}"
    uid = case.study_instance_uid
    findings = []
    if ims.study_instance_uid and ims.study_instance_uid != uid:
        findings.append(
            Finding(
                "order.imagingstudy-uid-mismatch",
                Severity.CRITICAL,
                "The EHR's ImagingStudy records another StudyInstanceUID than the DICOM study.",
                (
                    Evidence("fhir", ref, ims.study_instance_uid),
                    Evidence("dicom", "StudyInstanceUID", uid, uid=uid),
                ),
            )
        )
    actual = _image_modalities(case)
    listed = {m.upper() for m in ims.modalities}
    if listed and actual:
        listed_c = {_modality_class(m) for m in listed}
        extra = {m for m in actual if _modality_class(m) not in listed_c}
        if extra:
            disjoint = extra == actual
            findings.append(
                Finding(
                    "order.imagingstudy-modality-mismatch",
                    Severity.CRITICAL if disjoint else Severity.WARNING,
                    f"The EHR's ImagingStudy lists {', '.join(sorted(listed))} but the DICOM study "
                    f"contains {', '.join(sorted(extra))} images" + (" only." if disjoint else " as well."),
                    (
                        Evidence("fhir", ref, sorted(listed)),
                        Evidence("dicom", "Modality", sorted(actual), uid=uid),
                    ),
                )
            )
    return findings
