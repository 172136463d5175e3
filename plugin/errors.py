"""Errors of the plugin layer.

    PluginError
     +-- UsageError                a command line that cannot work
     +-- CdsAuthenticationError    a CDS client's call whose JWT cannot be trusted (.reason)
     |    +-- CdsJwksUnavailable   the allow-listed JWK Set could not be fetched or read
     +-- CdsClientsConfigError     the CDS clients allow-list file cannot be used
     +-- StoreError                the plugin's database (results, feedback, audit trail)
     |    +-- StoreUnavailable     cannot be opened or reached: file, server, driver, lock timeout
     |    +-- MigrationFailed      a schema migration did not complete (it is rolled back)
     |    +-- SchemaTooNew         written by a newer imaging-crosscheck than this one
     |    +-- SchemaOutOfDate      older than this code, and opened without migrating
     |    +-- ResultNotFound       a result id that is not stored (404)
     |    +-- DuplicateCard        a Card uuid recorded already (or twice in one call)
     |    +-- DuplicateSnapshot    a result's record snapshot kept already (it is never replaced)
     |    +-- SnapshotUnreadable   a stored record snapshot this version cannot read
     |    +-- CaseNotFound         a case id that is not stored (404)
     |    +-- StaleCase            a case changed since the caller read it (409: .current_version)
     |    +-- CaseChangeRefused    a change the case queue's rules do not allow (422)
     |    +-- DuplicateUser        a user name already taken (409)
     |    +-- UserNotFound         a user name that is not stored (404)
     +-- CdsCallError              a CDS Hooks call this service cannot answer as asked
     |    +-- CdsRequestInvalid    400: the request, its context or a feedback is not CDS Hooks 2.0.1
     |    |    +-- PrefetchInvalid 400: a prefetch value that is not valid FHIR R4 (.key)
     |    +-- UnknownCdsService    404: no CDS Service with that id
     |    +-- PrefetchUnavailable  412: FHIR data neither prefetched nor obtainable from fhirServer
     +-- WriteBackError            a result could not be written back to the FHIR server or the PACS
     |    +-- UnsuitableResult     the result or the arguments cannot be written as asked (fix the caller)
     |    +-- InvalidWriteBack     what the write-back built does not validate (a bug here: report it)
     +-- RequestInvalid            a request to the service that cannot be answered as sent (400)
     +-- ApiAuthenticationError    a REST call without a valid API key or bearer token (401)
     +-- ReportError               a case report (``crosscheck report``) that cannot be written
     |    +-- PdfRendererMissing   a PDF asked for without Playwright and Chromium installed
     +-- SweepError                a sweep (``crosscheck sweep``) that cannot run as asked
     |    +-- EmptySelection       a server sweep whose filters match no study on the PACS
     +-- FineTuneError             ``crosscheck finetune`` cannot work with the labels and studies given
          +-- LabelsFileInvalid    the labels file is missing, not JSON, or has an unusable entry
          +-- LabelledStudiesNotFound  none of the labelled studies is in the folder given

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler
(``CdsAuthenticationError`` to 401). Store messages name the database (password hidden),
revisions and result ids, never patient data or SQL parameters.
``CdsRequestInvalid.problems`` lists each wrong field as a `FieldProblem` (its location, such as
``context.patientId`` or ``prefetch.conditions``, and what is wrong with it), ready to become the
``issue`` entries of an OperationOutcome; no problem carries the offending value. Refusals by the
servers themselves are the connectors' ``ServerError`` hierarchy, not these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ApiAuthenticationError",
    "CaseChangeRefused",
    "CaseNotFound",
    "CdsAuthReason",
    "CdsAuthenticationError",
    "CdsCallError",
    "CdsClientsConfigError",
    "CdsJwksUnavailable",
    "CdsRequestInvalid",
    "DuplicateCard",
    "DuplicateSnapshot",
    "DuplicateUser",
    "EmptySelection",
    "FieldProblem",
    "FineTuneError",
    "InvalidWriteBack",
    "LabelledStudiesNotFound",
    "LabelsFileInvalid",
    "MigrationFailed",
    "PdfRendererMissing",
    "PluginError",
    "PrefetchInvalid",
    "PrefetchUnavailable",
    "ReportError",
    "RequestInvalid",
    "ResultNotFound",
    "SchemaOutOfDate",
    "SchemaTooNew",
    "SnapshotUnreadable",
    "StaleCase",
    "StoreError",
    "StoreUnavailable",
    "SweepError",
    "UnknownCdsService",
    "UnsuitableResult",
    "UsageError",
    "UserNotFound",
    "WriteBackError",
]

CdsAuthReason = Literal[
    "missing-token",
    "malformed",
    "unsigned",
    "disallowed-algorithm",
    "missing-kid",
    "unknown-issuer",
    "wrong-jku",
    "unknown-kid",
    "jwks-unavailable",
    "bad-signature",
    "missing-claim",
    "expired",
    "not-yet-valid",
    "lifetime-too-long",
    "wrong-audience",
    "replayed",
]
"""Why a CDS client's JWT was refused, in a word a log line or a metric label can carry."""


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""


class CdsAuthenticationError(PluginError):
    """A CDS client's call whose bearer JWT cannot be trusted (CDS Hooks "Trusting CDS Clients").

    ``reason`` is one of `CdsAuthReason`; the message says what was wrong without
    repeating the token or its claims.
    """

    def __init__(self, message: str, *, reason: CdsAuthReason) -> None:
        super().__init__(message)
        self.reason: CdsAuthReason = reason


class CdsJwksUnavailable(CdsAuthenticationError):
    """The JWK Set at an allow-listed ``jwks_url`` could not be fetched, or is not a usable JWK Set."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="jwks-unavailable")


class CdsClientsConfigError(PluginError):
    """The CDS clients allow-list file (``--cds-clients``) is missing, not JSON, or has an unusable entry."""


# -- the store (plugin.store) -------------------------------------------------------------------


class StoreError(PluginError):
    """The plugin's database could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or reached (missing driver, refused connection, lock timeout)."""


class MigrationFailed(StoreError):
    """A schema migration failed; the database is left at the revision it had."""


class SchemaTooNew(StoreError):
    """The database carries a schema revision this version of imaging-crosscheck does not know."""


class SchemaOutOfDate(StoreError):
    """The database's schema is older than this code's and the store was opened with ``migrate=False``."""


class ResultNotFound(StoreError):
    """A result id that the store does not hold (e.g. feedback naming the result its Card came from)."""


class DuplicateCard(StoreError):
    """A Card whose ``uuid`` the store holds already: a Card is recorded once, when it is issued."""


class DuplicateSnapshot(StoreError):
    """A record snapshot for a result that has one already: a snapshot is kept once, with its
    result, and never replaced (it is the record as it was when the result was scored)."""


class SnapshotUnreadable(StoreError):
    """A stored record snapshot whose JSON this version cannot read (a newer schema, or damaged)."""


class CaseNotFound(StoreError):
    """A case id (or a comment id within a case) that the store does not hold."""


class StaleCase(StoreError):
    """A case changed since the caller read it: ``current_version`` is the version it has now.

    The caller reads the case again, shows the change, and retries with that version.
    """

    def __init__(self, message: str, *, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class CaseChangeRefused(StoreError):
    """A change the case queue's rules refuse: a status transition not allowed, a disposition or a
    reopening without a note, an assignee who is not an active user, a comment superseded twice."""


class DuplicateUser(StoreError):
    """A user name that is already taken (user names are compared case-insensitively)."""


class UserNotFound(StoreError):
    """A user name that the store does not hold."""


# -- the service (plugin.service) ---------------------------------------------------------------


class RequestInvalid(PluginError):
    """A request to the service that cannot be answered as sent (400)."""


class ApiAuthenticationError(PluginError):
    """A REST call without a valid API key or OAuth2 bearer token (401)."""


# -- case reports (plugin.review.report) --------------------------------------------------------


class ReportError(PluginError):
    """A case report that cannot be written as asked."""


class PdfRendererMissing(ReportError):
    """A PDF report asked for where Playwright or Debian's Chromium is not installed."""


# -- sweeps (plugin.sweep) ----------------------------------------------------------------------


class SweepError(PluginError):
    """A sweep that cannot run as asked (bad input is `UsageError`; the servers' refusals are the
    connectors' ``ServerError``)."""


class EmptySelection(SweepError):
    """A server sweep whose filters (StudyDate range, ModalitiesInStudy, PatientIDs, AccessionNumbers)
    match no study on the PACS; the message names the filters, never the identifiers."""


# -- fine-tuning on labels (plugin.finetune) ----------------------------------------------------


class FineTuneError(PluginError):
    """``crosscheck finetune`` cannot work with the labels and studies given (e.g. no label that can
    train a head)."""


class LabelsFileInvalid(FineTuneError):
    """The labels file is missing, not JSON, not ``{"labels": [...]}``, or has an entry that is not a
    label (the message names the entry and the field)."""


class LabelledStudiesNotFound(FineTuneError):
    """None of the labelled studies is in the folder given (matched by StudyInstanceUID)."""


# -- CDS Hooks calls (plugin.cds) ---------------------------------------------------------------


@dataclass(frozen=True)
class FieldProblem:
    """One wrong field of a CDS Hooks JSON document: where (``prefetch.patient``) and what is wrong."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class CdsCallError(PluginError):
    """A CDS Hooks call this service cannot answer as asked."""


class CdsRequestInvalid(CdsCallError):
    """The request, its ``context``, or a feedback is not as CDS Hooks 2.0.1 says (HTTP 400)."""

    def __init__(self, what: str, problems: Iterable[FieldProblem]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(str(p) for p in self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{what}: {listed}{more}" if listed else what)


class PrefetchInvalid(CdsRequestInvalid):
    """A prefetch value that is not what its template asks for or does not validate as FHIR R4."""

    def __init__(self, key: str, problems: Iterable[FieldProblem]) -> None:
        self.key = key
        super().__init__(
            f"prefetch key {key!r} is not valid FHIR R4; send what the template asks for, or omit the key",
            problems,
        )


class UnknownCdsService(CdsCallError):
    """No CDS Service with that id (HTTP 404)."""


class PrefetchUnavailable(CdsCallError):
    """FHIR data the service needs was neither prefetched nor obtainable from ``fhirServer`` (HTTP 412).

    ``keys`` are the prefetch keys that could not be satisfied.
    """

    def __init__(self, message: str, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        super().__init__(message)


# -- write-back (plugin.writeback) --------------------------------------------------------------


class WriteBackError(PluginError):
    """A ``CrossCheckResult`` could not be written back as a FHIR resource or a DICOM SR."""


class UnsuitableResult(WriteBackError):
    """The result or the arguments given with it cannot be written as asked: bad result data.

    For example a ``DetectedIssue`` asked for a study that was not flagged, a result
    without the model that made it, a reference that is not ``Patient/[id]``, or a
    heatmap for an image that is not among the source instances.
    """


class InvalidWriteBack(WriteBackError):
    """A resource or Structured Report built from a well-formed result does not validate.

    This is a bug in imaging-crosscheck's write-back, not in the data: ``what`` names
    the object (``DetectedIssue``, ``Comprehensive 3D SR``) and ``reason`` the rule it broke.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(
            f"the {what} built by imaging-crosscheck's write-back does not validate ({reason}); "
            "this is a bug in imaging-crosscheck, not in the result: please report it with the result JSON"
        )
