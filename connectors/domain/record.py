"""The patient's record as the rest of the code sees it.

These are plain, frozen value objects built from FHIR R4 resources by
`connectors.fhir.extract`. They keep the FHIR words (``Observation``,
``ServiceRequest``, ``DiagnosticReport`` ...) in their docstrings so a reader can
map each field back to the standard, but they carry only what the cross-checks
and the model use, already typed (dates are ``datetime``, values are ``float``).

Every object keeps the ``id`` of the FHIR resource it came from, so evidence in a
finding can point back to it as ``"Observation/<id>"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

__all__ = [
    "Coding",
    "Condition",
    "DeviceRecord",
    "DiagnosticReport",
    "Encounter",
    "ImagingOrder",
    "ImagingStudyRecord",
    "LabResult",
    "Medication",
    "Patient",
    "PatientIdentifier",
    "PatientRecord",
    "Procedure",
    "ReferenceRange",
]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Coding:
    """One FHIR ``Coding``: a code in a code system, with its display text."""

    system: str
    code: str
    display: str | None = None

    def matches(self, system: str, code: str) -> bool:
        return self.system == system and self.code == code


@dataclass(frozen=True)
class PatientIdentifier:
    """A FHIR ``Identifier`` of a Patient (an MRN, say): ``system`` + ``value``."""

    system: str | None
    value: str
    type_code: str | None = None  # v2-0203 code, e.g. "MR"


@dataclass(frozen=True)
class Patient:
    """Demographics from the FHIR ``Patient`` resource.

    ``family`` and ``given`` are from the first ``official`` (else first) name.
    ``gender`` is the FHIR administrative gender: male, female, other, unknown.
    """

    id: str
    identifiers: tuple[PatientIdentifier, ...] = ()
    family: str | None = None
    given: tuple[str, ...] = ()
    gender: str | None = None
    birth_date: date | None = None
    deceased: datetime | None = None
    managing_organization: str | None = None


@dataclass(frozen=True)
class ReferenceRange:
    """``Observation.referenceRange``: ``low``/``high`` in the result's unit."""

    low: float | None = None
    high: float | None = None
    text: str | None = None


@dataclass(frozen=True)
class LabResult:
    """An ``Observation`` with a quantity: a laboratory result or a vital sign.

    ``code`` is the LOINC coding when the Observation has one, else its first
    coding. ``unit`` is the UCUM code of ``valueQuantity``. ``interpretation`` is
    the first ``Observation.interpretation`` code (H, L, N, HH, LL, A ...).
    ``category`` is ``laboratory``, ``vital-signs`` or another FHIR category code.
    """

    id: str
    code: Coding
    value: float | None
    unit: str | None = None
    reference_range: ReferenceRange | None = None
    interpretation: str | None = None
    effective: datetime | None = None
    category: str | None = None
    status: str | None = None
    value_text: str | None = None

    @property
    def relative_value(self) -> float | None:
        """The value relative to its reference range: 0 at ``low``, 1 at ``high``.

        ``None`` when there is no numeric value or no usable range.
        """
        if self.value is None or self.reference_range is None:
            return None
        low, high = self.reference_range.low, self.reference_range.high
        if low is not None and high is not None and high > low:
            return (self.value - low) / (high - low)
        if high is not None and high > 0:
            return self.value / high
        if low is not None and low > 0:
            return self.value / low - 1.0 + 0.5
        return None


@dataclass(frozen=True)
class Condition:
    """A FHIR ``Condition``; ``codes`` holds every coding (SNOMED CT, ICD-10-CM ...)."""

    id: str
    codes: tuple[Coding, ...]
    clinical_status: str | None = None
    verification_status: str | None = None
    onset: datetime | None = None
    abatement: datetime | None = None
    recorded: datetime | None = None
    body_site: tuple[Coding, ...] = ()
    text: str | None = None

    @property
    def is_active(self) -> bool:
        if self.verification_status in {"refuted", "entered-in-error"}:
            return False
        return self.clinical_status in {None, "active", "recurrence", "relapse"}


@dataclass(frozen=True)
class Medication:
    """A ``MedicationRequest`` or ``MedicationStatement`` (``kind`` says which)."""

    id: str
    kind: str
    codes: tuple[Coding, ...]
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    text: str | None = None


@dataclass(frozen=True)
class Procedure:
    """A FHIR ``Procedure`` that was performed."""

    id: str
    codes: tuple[Coding, ...]
    status: str | None = None
    performed: datetime | None = None
    text: str | None = None


@dataclass(frozen=True)
class ImagingOrder:
    """An imaging ``ServiceRequest``: what was ordered, why, and when.

    ``accession_number`` is the identifier of type ACSN (the link to the DICOM
    study's AccessionNumber). ``reason_codes`` come from ``reasonCode``;
    ``reason_references`` are ``reasonReference`` strings ("Condition/12").
    """

    id: str
    codes: tuple[Coding, ...]
    status: str | None = None
    intent: str | None = None
    authored: datetime | None = None
    occurrence: datetime | None = None
    accession_number: str | None = None
    reason_codes: tuple[Coding, ...] = ()
    reason_references: tuple[str, ...] = ()
    body_site: tuple[Coding, ...] = ()
    text: str | None = None


@dataclass(frozen=True)
class DiagnosticReport:
    """A (radiology) ``DiagnosticReport``.

    ``imaging_study_ids`` are the ids of the ``ImagingStudy`` resources it
    references; ``based_on`` the ids of the ``ServiceRequest`` it fulfils.
    """

    id: str
    codes: tuple[Coding, ...]
    status: str | None = None
    category: tuple[str, ...] = ()
    effective: datetime | None = None
    issued: datetime | None = None
    conclusion: str | None = None
    conclusion_codes: tuple[Coding, ...] = ()
    imaging_study_ids: tuple[str, ...] = ()
    based_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Encounter:
    """A FHIR ``Encounter``: ``class_code`` is the v3 ActCode (AMB, IMP, EMER)."""

    id: str
    status: str | None = None
    class_code: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    types: tuple[Coding, ...] = ()


@dataclass(frozen=True)
class DeviceRecord:
    """A FHIR ``Device``: for imaging, the modality that performed a series."""

    id: str
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    types: tuple[Coding, ...] = ()
    identifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImagingStudyRecord:
    """The FHIR ``ImagingStudy``: the EHR's view of a DICOM study.

    ``study_instance_uid`` comes from the identifier with system ``urn:dicom:uid``
    (value ``urn:oid:<uid>``). ``device_ids`` are the ``Device`` ids that appear
    as series performers. ``endpoint`` is the address of the first Endpoint.
    """

    id: str
    study_instance_uid: str | None
    status: str | None = None
    started: datetime | None = None
    accession_number: str | None = None
    modalities: tuple[str, ...] = ()
    based_on: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()
    endpoint: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class PatientRecord:
    """Everything the FHIR side knows about one patient.

    ``problems`` lists resources that were skipped because they did not validate
    (as ``"Observation/<id>: <reason>"``), so nothing is dropped silently.
    """

    patient: Patient
    labs: tuple[LabResult, ...] = ()
    conditions: tuple[Condition, ...] = ()
    medications: tuple[Medication, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    orders: tuple[ImagingOrder, ...] = ()
    reports: tuple[DiagnosticReport, ...] = ()
    encounters: tuple[Encounter, ...] = ()
    devices: tuple[DeviceRecord, ...] = ()
    imaging_studies: tuple[ImagingStudyRecord, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def patient_id(self) -> str:
        return self.patient.id

    def labs_with_code(self, system: str, code: str) -> tuple[LabResult, ...]:
        return tuple(lab for lab in self.labs if lab.code.matches(system, code))
