"""Plain typed domain objects: the patient record, DICOM studies, and cases.

`fusion` may import this subpackage (and only this one) from `connectors`.
"""

from connectors.domain.case import Case, LinkMethod, SiteDevice, SiteProfile
from connectors.domain.imaging import Equipment, Instance, PatientIdentity, PixelLoader, Series, Study
from connectors.domain.record import (
    Coding,
    Condition,
    DeviceRecord,
    DiagnosticReport,
    Encounter,
    ImagingOrder,
    ImagingStudyRecord,
    LabResult,
    Medication,
    Patient,
    PatientIdentifier,
    PatientRecord,
    Procedure,
    ReferenceRange,
)

__all__ = [
    "Case",
    "Coding",
    "Condition",
    "DeviceRecord",
    "DiagnosticReport",
    "Encounter",
    "Equipment",
    "ImagingOrder",
    "ImagingStudyRecord",
    "Instance",
    "LabResult",
    "LinkMethod",
    "Medication",
    "Patient",
    "PatientIdentifier",
    "PatientIdentity",
    "PatientRecord",
    "PixelLoader",
    "Procedure",
    "ReferenceRange",
    "Series",
    "SiteDevice",
    "SiteProfile",
    "Study",
]
