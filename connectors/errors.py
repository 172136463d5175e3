"""Errors raised by the connectors.

Hierarchy::

    ConnectorError                 anything that went wrong getting data in or out
    ├── FhirError                  FHIR input or server trouble
    │   ├── FhirResourceInvalid    a resource that does not validate against R4
    │   └── FhirBundleInvalid      a file that is not a usable Bundle / NDJSON
    ├── DicomError                 DICOM input trouble
    │   ├── InvalidDicomInput      not DICOM, truncated, or missing required attributes
    │   ├── UnsupportedTransferSyntax   pixel data no installed decoder can read
    │   └── PixelDataTooLarge      over the configured pixel / frame / byte limits
    └── NoInputFound               a folder with nothing usable in it

Each message says what was wrong and, where there is one, what to do about it.
Messages never contain patient names, birth dates or identifiers: they name
files, resource ids and UIDs.
"""

from __future__ import annotations

__all__ = [
    "ConnectorError",
    "DicomError",
    "FhirBundleInvalid",
    "FhirError",
    "FhirResourceInvalid",
    "InvalidDicomInput",
    "NoInputFound",
    "PixelDataTooLarge",
    "UnsupportedTransferSyntax",
]


class ConnectorError(Exception):
    """Base class of every error the connectors raise."""


class FhirError(ConnectorError):
    """FHIR input or server trouble."""


class FhirResourceInvalid(FhirError):
    """A FHIR resource that does not validate; carries its type, id and reason."""

    def __init__(self, resource_type: str, resource_id: str | None, reason: str) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.reason = reason
        where = f"{resource_type}/{resource_id}" if resource_id else f"a {resource_type} without id"
        super().__init__(f"{where} does not validate as FHIR R4: {reason}")


class FhirBundleInvalid(FhirError):
    """A file that is not a usable FHIR Bundle or NDJSON export."""


class DicomError(ConnectorError):
    """DICOM input trouble."""


class InvalidDicomInput(DicomError):
    """Not DICOM, truncated, or missing attributes every image must have."""


class UnsupportedTransferSyntax(DicomError):
    """Pixel data in a transfer syntax that no installed decoder handles."""


class PixelDataTooLarge(DicomError):
    """Pixel data over the configured limits (a decompression bomb, absurd Rows x Columns)."""


class NoInputFound(ConnectorError):
    """A path that holds nothing usable (an empty folder, no DICOM, no Bundle)."""
