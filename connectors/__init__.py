"""Getting data in and out of clinical systems: FHIR R4, DICOM, and linking them.

Entry points: `read_bundle` / `read_ndjson` (FHIR files -> `PatientRecord`),
`read_dicom` / `read_dicom_folder` (DICOM files -> `Study`), and `link_cases`
(studies + records -> `Case`). Readers take an explicit `Strictness` and
`DicomLimits`; nothing is read from the environment. This package never imports
torch or fastapi.
"""

from connectors.dicom import DicomLimits, DicomReadResult, SkippedFile, read_dicom, read_dicom_folder
from connectors.errors import (
    ConnectorError,
    DicomError,
    FhirBundleInvalid,
    FhirError,
    FhirResourceInvalid,
    InvalidDicomInput,
    NoInputFound,
    PixelDataTooLarge,
    UnsupportedTransferSyntax,
)
from connectors.fhir import read_bundle, read_ndjson, records_from_bundle, records_from_resources
from connectors.link import link_cases
from connectors.strictness import Strictness

__all__ = [
    "ConnectorError",
    "DicomError",
    "DicomLimits",
    "DicomReadResult",
    "FhirBundleInvalid",
    "FhirError",
    "FhirResourceInvalid",
    "InvalidDicomInput",
    "NoInputFound",
    "PixelDataTooLarge",
    "SkippedFile",
    "Strictness",
    "UnsupportedTransferSyntax",
    "link_cases",
    "read_bundle",
    "read_dicom",
    "read_dicom_folder",
    "read_ndjson",
    "records_from_bundle",
    "records_from_resources",
]
