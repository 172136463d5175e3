"""The radiologist's side: what the filed image shows, and the report's conclusion.

The report describes the image that was filed in the archive, so for a
manipulated study it follows the manipulation (the radiologist was fooled):
an injected lesion is reported, a removed one is not, a wrong patient's image
is reported with that patient's findings. `filed_image_findings` says which
findings that is; `conclusion_text` writes the conclusion a radiologist would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fusion.cohort.scenario import ClinicalCondition, ImageFinding, Manipulation, StudyKind, StudyPlan

__all__ = ["conclusion_text", "filed_image_findings"]

logger = logging.getLogger(__name__)

C = ClinicalCondition
_CHEST_FOV_MM = 400.0  # as rendered by `fusion.cohort.images`
_HEAD_FOV_MM = 220.0


def filed_image_findings(
    plan: StudyPlan, donor_findings: Sequence[ImageFinding] | None = None
) -> tuple[ImageFinding, ...]:
    """What the filed image shows, after ``plan.manipulation``.

    ``donor_findings`` are the findings of the donor study's image for a
    wrong-patient case (the target's own findings are not in those pixels);
    without them the plan's own findings are returned.
    """
    m = plan.manipulation
    if m is Manipulation.WRONG_PATIENT and donor_findings is not None:
        return tuple(donor_findings)
    if m is Manipulation.FINDING_INJECTED and plan.manipulated_finding is not None:
        return (*plan.image_findings, plan.manipulated_finding)
    if m is Manipulation.FINDING_REMOVED and plan.manipulated_finding is not None:
        return tuple(f for f in plan.image_findings if f != plan.manipulated_finding)
    return plan.image_findings


def _amount(severity: float) -> str:
    return "small" if severity < 0.35 else ("moderate" if severity < 0.65 else "large")


def _lobe(f: ImageFinding) -> str:
    y = f.center[1]
    zone = "upper" if y < 0.4 else ("middle" if y < 0.58 else "lower")
    if f.side is None:
        return f"{zone} zones bilaterally" if zone != "middle" else "mid zones bilaterally"
    if zone == "middle":
        return "right middle lobe" if f.side == "right" else "lingula"
    return f"{f.side} {zone} lobe"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _chest_sentence(f: ImageFinding, ct: bool) -> str:
    side = f.side or "bilateral"
    if f.condition is C.PNEUMONIA:
        if ct:
            return f"Consolidation with air bronchograms in the {_lobe(f)}, consistent with pneumonia."
        return (
            f"Airspace consolidation in the {_lobe(f)}, "
            "in keeping with pneumonia in the appropriate clinical setting."
        )
    if f.condition is C.HEART_FAILURE:
        text = (
            "Cardiomegaly with interlobular septal thickening and vascular congestion, "
            "in keeping with cardiac failure."
            if ct
            else f"Cardiomegaly (cardiothoracic ratio approximately {f.size:.2f}) "
            "with upper lobe venous diversion, in keeping with cardiac failure."
        )
        if f.severity > 0.7:
            text += " Small bilateral pleural effusions."
        return text
    if f.condition is C.PLEURAL_EFFUSION:
        return f"{_amount(f.severity).capitalize()} {side} pleural effusion" + (
            " with adjacent passive atelectasis." if ct else " with blunting of the costophrenic angle."
        )
    if f.condition is C.PNEUMOTHORAX:
        return (
            f"{_amount(f.severity).capitalize()} {side} pneumothorax "
            f"(approximately {round(f.severity * 100):d}% collapse) with a visible visceral pleural line. "
            "No mediastinal shift."
        )
    if f.condition is C.LUNG_NODULE:
        mm = round(f.size * 100)
        if ct:
            return (
                f"{mm} mm solid pulmonary nodule in the {_lobe(f)}. "
                "Follow-up CT as per Fleischner Society guidelines."
            )
        return (
            f"{mm} mm rounded opacity projected over the {_lobe(f)}, likely a pulmonary nodule. "
            "CT is recommended."
        )
    if f.condition is C.LUNG_CANCER:
        mm = round(f.size * _CHEST_FOV_MM)
        hilar = " at the hilum" if abs(f.center[0] - 0.5) < 0.12 else ""
        return (
            f"{mm} mm spiculated mass in the {_lobe(f)}{hilar}, highly suspicious for primary bronchogenic "
            "carcinoma. Tissue sampling and staging recommended."
        )
    if f.condition is C.RIB_FRACTURE:
        rib = 3 + round(f.center[1] * 7)
        return f"Acute minimally displaced fracture of the {side} {_ordinal(rib)} rib laterally."
    return f"Abnormality related to {f.condition.value} on the {side}."


def _head_sentence(f: ImageFinding) -> str:
    side = f.side or "midline"
    y = f.center[1]
    lobe = "frontal" if y < 0.42 else ("parietal" if y < 0.58 else "occipital")
    if f.condition is C.BRAIN_TUMOUR:
        mm = round(f.size * _HEAD_FOV_MM)
        return (
            f"{mm} mm heterogeneous intra-axial mass in the {side} {lobe} lobe "
            "with surrounding vasogenic oedema and local mass effect, suspicious for high-grade glioma."
        )
    if f.condition is C.STROKE:
        return (
            f"T2/FLAIR hyperintensity in the {side} middle cerebral artery territory "
            "involving cortex and subcortical white matter, consistent with a recent infarct."
        )
    return f"Abnormality related to {f.condition.value} on the {side}."


_NORMAL = {
    StudyKind.CHEST_DX: "No acute cardiopulmonary abnormality. Heart size normal. Lungs clear. "
    "No pleural effusion or pneumothorax.",
    StudyKind.CHEST_CT: "No acute abnormality in the chest. No consolidation, pulmonary nodule or mass. "
    "No pleural effusion or pneumothorax.",
    StudyKind.BRAIN_MR: "No acute intracranial abnormality. "
    "No mass lesion, haemorrhage or territorial infarct.",
}


def conclusion_text(kind: StudyKind, findings: Sequence[ImageFinding]) -> str:
    """The impression of a radiology report for an image showing ``findings``."""
    if not findings:
        return _NORMAL[kind]
    if kind is StudyKind.BRAIN_MR:
        sentences = [_head_sentence(f) for f in findings]
    else:
        sentences = [_chest_sentence(f, kind is StudyKind.CHEST_CT) for f in findings]
    if len(sentences) == 1:
        return sentences[0]
    return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, start=1))
