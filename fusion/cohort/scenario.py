"""The plan of one simulated patient, shared by the record side and the image side.

A ``PatientScenario`` says who the patient is, what they have (conditions with
onset, side and severity), and which imaging studies they had (``StudyPlan``),
with what each image shows (``ImageFinding``). Two renderers read it:

- `fusion.cohort.records` writes the FHIR R4 transaction Bundle (Patient,
  Observations drawn from condition-dependent distributions, Conditions,
  medications, the imaging ServiceRequest, ImagingStudy, Device, the radiology
  DiagnosticReport whose conclusion matches what the image shows);
- `fusion.cohort.images` renders the phantom images and writes the DICOM files.

Manipulations (``Manipulation``) are decided by `fusion.cohort.simulate` and
recorded on the ``StudyPlan``, so the two renderers and the manifest agree.

Image geometry conventions used by ``ImageFinding.center``: x runs from the
patient's right (0) to left (1) as seen on the image (radiological convention
puts the patient's right on the image's left, so x=0 is the image's left
column); y runs from head (0) to feet (1); z, for CT and MR, from the bottom of
the scanned range (0) to its top (1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from connectors.domain import SiteDevice, SiteProfile

__all__ = [
    "ClinicalCondition",
    "ConditionEpisode",
    "ImageFinding",
    "Manipulation",
    "PatientScenario",
    "SimSite",
    "StudyKind",
    "StudyPlan",
]


class StudyKind(StrEnum):
    """The imaging studies the simulator renders."""

    CHEST_DX = "chest-dx"  # projection radiograph, PA/AP and/or lateral views
    CHEST_CT = "chest-ct"  # axial multi-slice series in Hounsfield units
    BRAIN_MR = "brain-mr"  # axial T2-weighted (or FLAIR) multi-slice series

    @property
    def modality(self) -> str:
        return {"chest-dx": "DX", "chest-ct": "CT", "brain-mr": "MR"}[self.value]

    @property
    def body_part(self) -> str:
        return "HEAD" if self is StudyKind.BRAIN_MR else "CHEST"


class ClinicalCondition(StrEnum):
    """Conditions that show both in the image and in the record.

    What the image shows, per condition (rendered by `fusion.cohort.images`):
    - pneumonia: lobar consolidation (side, zone via center.y, extent = size);
    - heart-failure: cardiomegaly (cardiothoracic ratio rises with severity) and
      small bilateral effusions at high severity;
    - pleural-effusion: fluid layering at the base of ``side`` (height = severity);
    - pneumothorax: lung edge retracted from the chest wall on ``side``
      (fraction collapsed = severity);
    - lung-nodule: a round opacity of 5-20 mm (size in mm / 100);
    - lung-cancer: an irregular mass of 25-70 mm, maybe hilar;
    - rib-fracture: a cortical break and step in one rib on ``side``;
    - brain-tumour: a mass with surrounding oedema (MR);
    - stroke: an infarct in a vascular territory on ``side`` (MR, T2 bright).
    """

    PNEUMONIA = "pneumonia"
    HEART_FAILURE = "heart-failure"
    PLEURAL_EFFUSION = "pleural-effusion"
    PNEUMOTHORAX = "pneumothorax"
    LUNG_NODULE = "lung-nodule"
    LUNG_CANCER = "lung-cancer"
    RIB_FRACTURE = "rib-fracture"
    BRAIN_TUMOUR = "brain-tumour"
    STROKE = "stroke"

    @property
    def region(self) -> str:
        return "head" if self in {ClinicalCondition.BRAIN_TUMOUR, ClinicalCondition.STROKE} else "chest"


class Manipulation(StrEnum):
    """What was done to a manipulated case (the manifest's ``manipulation``)."""

    WRONG_PATIENT = "wrong-patient"  # pixels of another patient's study, header rewritten
    FINDING_INJECTED = "finding-injected"  # a lesion pasted into an image the record does not support
    FINDING_REMOVED = "finding-removed"  # a lesion the record supports inpainted away
    SYNTHETIC = "synthetic"  # the image made by a generative model, not the phantom
    HEADER_IDENTITY = "header-identity"  # patient name / birth date / sex changed in the header
    HEADER_DATES = "header-dates"  # study date moved before the order or after the report
    HEADER_DEVICE = "header-device"  # device the site does not own, or a general-purpose toolkit


@dataclass(frozen=True)
class ImageFinding:
    """What one image shows for a condition (see ``ClinicalCondition``)."""

    condition: ClinicalCondition
    side: str | None  # "left" | "right" | None (central / bilateral)
    center: tuple[float, float, float]  # relative, see the module docstring
    size: float  # relative to the field of view (0..1); nodules: mm / 100
    severity: float  # 0..1


@dataclass(frozen=True)
class ConditionEpisode:
    """A condition the patient has in their record, with its course."""

    condition: ClinicalCondition
    onset: datetime
    side: str | None
    severity: float
    abatement: datetime | None = None


@dataclass(frozen=True)
class StudyPlan:
    """One imaging study: when, on which device, what it shows, what was done to it.

    ``image_findings`` is what the *rendered* image shows before manipulation.
    ``reason`` is the condition the study was ordered for (``None`` for a
    screening / follow-up study). ``views`` lists the DX views (``PA``, ``AP``,
    ``LL``); CT and MR have one series of ``slices`` slices.
    ``manipulation`` is set by the orchestrator, with ``donor_patient_id``
    (wrong-patient) or ``manipulated_finding`` (injected / removed) as needed.
    """

    kind: StudyKind
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    accession_number: str
    order_id: str
    report_id: str
    imaging_study_id: str
    order_datetime: datetime
    study_datetime: datetime
    report_datetime: datetime
    device: SiteDevice
    image_findings: tuple[ImageFinding, ...]
    reason: ClinicalCondition | None = None
    views: tuple[str, ...] = ()
    slices: int = 0
    manipulation: Manipulation | None = None
    donor_patient_id: str | None = None
    manipulated_finding: ImageFinding | None = None
    family: str | None = None  # the generator family of a pixel manipulation (see images.families)
    nuisance: str | None = None  # re-encoding or resizing applied to the finished pixels, any case


@dataclass(frozen=True)
class PatientScenario:
    """One simulated patient: identity, body, conditions and imaging."""

    patient_id: str  # the FHIR Patient id
    mrn: str  # Patient.identifier (type MR) and the DICOM PatientID
    family: str
    given: tuple[str, ...]
    gender: str  # "male" | "female"
    birth_date: date
    height_cm: float
    weight_kg: float
    smoker: bool
    conditions: tuple[ConditionEpisode, ...]
    studies: tuple[StudyPlan, ...]
    deceased: datetime | None = None

    @property
    def bmi(self) -> float:
        return self.weight_kg / (self.height_cm / 100.0) ** 2

    def age_at(self, when: date) -> float:
        return (when - self.birth_date).days / 365.25


@dataclass(frozen=True)
class SimSite:
    """The simulated hospital: its organisation, UID root and imaging devices."""

    organization_id: str
    name: str
    uid_root: str  # every UID the site writes starts with this root + "."
    mrn_system: str  # Patient.identifier.system for MRNs
    accession_system: str  # ServiceRequest.identifier.system for accession numbers
    devices: tuple[SiteDevice, ...] = field(default=())

    @property
    def profile(self) -> SiteProfile:
        return SiteProfile(name=self.name, uid_roots=(self.uid_root,), devices=self.devices)

    def devices_for(self, modality: str) -> tuple[SiteDevice, ...]:
        return tuple(d for d in self.devices if d.modality == modality)
