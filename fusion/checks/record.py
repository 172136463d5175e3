"""Checks on the record itself: what could not be read from it.

A resource that did not validate is skipped by the connectors under the
``warn``/``ignore`` strictness and listed in ``PatientRecord.problems``; this
check puts that list in the result, so a reader knows the record was incomplete.
"""

from __future__ import annotations

from connectors.domain import Case
from fusion.checks.context import CheckContext
from fusion.result import Evidence, Finding, Severity

__all__ = ["check_record_problems"]

_MAX_LISTED = 10


def check_record_problems(case: Case, ctx: CheckContext) -> list[Finding]:
    record = case.record
    if record is None or not record.problems:
        return []
    n = len(record.problems)
    evidence = tuple(
        Evidence("fhir", problem.split(":", 1)[0].strip(), value=problem.split(":", 1)[-1].strip())
        for problem in record.problems[:_MAX_LISTED]
    )
    more = f" (first {_MAX_LISTED} listed)" if n > _MAX_LISTED else ""
    return [
        Finding(
            code="record.resources-skipped",
            severity=Severity.WARNING,
            message=f"{n} resource(s) of the record did not validate and were left out of the check{more}.",
            evidence=evidence,
        )
    ]
