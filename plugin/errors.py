"""Errors of the plugin layer.

    PluginError
     +-- UsageError                a command line that cannot work
     +-- CdsCallError              a CDS Hooks call this service cannot answer as asked
          +-- CdsRequestInvalid    400: the request, its context or a feedback is not CDS Hooks 2.0.1
          |    +-- PrefetchInvalid 400: a prefetch value that is not valid FHIR R4 (.key)
          +-- UnknownCdsService    404: no CDS Service with that id
          +-- PrefetchUnavailable  412: FHIR data neither prefetched nor obtainable from fhirServer (.keys)

Each area of the plugin (CDS Hooks, write-back, the store) adds its own branch below
``PluginError``; the service maps the branches to HTTP answers in one exception handler.
``CdsRequestInvalid.problems`` lists each wrong field as a `FieldProblem` (its location, such as
``context.patientId`` or ``prefetch.conditions``, and what is wrong with it), ready to become the
``issue`` entries of an OperationOutcome; no problem carries the offending value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CdsCallError",
    "CdsRequestInvalid",
    "FieldProblem",
    "PluginError",
    "PrefetchInvalid",
    "PrefetchUnavailable",
    "UnknownCdsService",
    "UsageError",
]


class PluginError(Exception):
    """Base of the plugin layer's errors."""


class UsageError(PluginError):
    """A command line that cannot work (a missing, out-of-range or contradictory option)."""


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
