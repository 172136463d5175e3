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
    ├── NoInputFound               a folder with nothing usable in it
    │   └── NoImagingFound         a patient or query with no study behind it
    └── ServerError                a FHIR server, PACS or token endpoint said no or did not answer
        ├── ServerUnreachable      connection refused, DNS failure, TLS failure
        ├── ServerTimeout          no answer within the configured timeout
        ├── AuthenticationFailed   401 / 403, or a token endpoint that refused the client
        ├── RemoteNotFound         404 / 410: the resource, patient or study does not exist there
        ├── RequestRejected        another 4xx (the server's OperationOutcome says why)
        └── ServerFailed           5xx or 429 still failing after the retries

Each message says what was wrong and, where there is one, what to do about it.
Messages never contain patient names, birth dates or identifiers: they name
files, resource ids and UIDs.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConnectorError",
    "DicomError",
    "FhirBundleInvalid",
    "FhirError",
    "FhirResourceInvalid",
    "InvalidDicomInput",
    "NoImagingFound",
    "NoInputFound",
    "PixelDataTooLarge",
    "RemoteNotFound",
    "RequestRejected",
    "ServerError",
    "ServerFailed",
    "ServerTimeout",
    "ServerUnreachable",
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


class NoImagingFound(NoInputFound):
    """A patient, accession number or StudyInstanceUID with no study behind it on the PACS."""


class ServerError(ConnectorError):
    """A remote server (FHIR, PACS, token endpoint) refused a request or did not answer.

    ``url`` is the request URL without its query string (queries can carry
    patient identifiers); ``status`` the HTTP status when there was one;
    ``issues`` the ``diagnostics`` / ``details.text`` of an OperationOutcome body.
    """

    def __init__(
        self, message: str, *, url: str | None = None, status: int | None = None, issues: tuple[str, ...] = ()
    ) -> None:
        self.url = url
        self.status = status
        self.issues = issues
        super().__init__(message)


class ServerUnreachable(ServerError):
    """Connection refused, name not resolved, TLS handshake failed."""


class ServerTimeout(ServerError):
    """No answer within the configured timeout."""


class AuthenticationFailed(ServerError):
    """401 or 403, or a token endpoint that refused the client's credentials."""


class RemoteNotFound(ServerError):
    """404 or 410: the resource, patient or study does not exist on that server."""


class RequestRejected(ServerError):
    """Another 4xx: the server understood the request and refused it."""


class ServerFailed(ServerError):
    """5xx or 429 still failing after the configured retries."""
