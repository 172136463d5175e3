"""Deterministic, rule-based cross-checks of a ``Case``.

Each check is a pure function ``check_x(case, ctx) -> list[Finding]``; ``CHECKS``
names them all and ``run_checks`` runs them, most severe findings first. A
check that raises does not sink the others: it is logged (type only, no PHI)
and reported as an ``internal.check-failed`` info finding.

Finding codes by module: ``identity.*`` (header vs FHIR Patient), ``dates.*``
(study date vs birth, death, order, report, now), ``order.*`` (modality, body
part, laterality vs ServiceRequest / DiagnosticReport / ImagingStudy),
``device.*`` (site devices, UID roots, toolkits, acquisition attributes),
``pixels.*`` (physical value ranges) and ``duplicate.*`` (the same image under
another patient) and ``record.*`` (resources of the record that could not
be read).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from connectors.domain import Case
from fusion.checks import dates, device, duplicates, identity, order, pixels, record
from fusion.checks.context import Check, CheckContext
from fusion.checks.duplicates import DuplicateMatch, ImageFingerprint, PerceptualHashIndex
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "CHECKS",
    "Check",
    "CheckContext",
    "DuplicateMatch",
    "ImageFingerprint",
    "PerceptualHashIndex",
    "finding_order",
    "run_checks",
]

logger = logging.getLogger(__name__)

CHECKS: Mapping[str, Check] = MappingProxyType(
    {
        "identity.patient-id": identity.check_patient_id,
        "identity.name": identity.check_patient_name,
        "identity.birth-date": identity.check_birth_date,
        "identity.sex": identity.check_sex,
        "identity.age": identity.check_patient_age,
        "dates.before-birth": dates.check_study_before_birth,
        "dates.after-death": dates.check_study_after_death,
        "dates.before-order": dates.check_study_before_order,
        "dates.after-report": dates.check_study_after_report,
        "dates.in-future": dates.check_study_in_future,
        "dates.acquisition": dates.check_acquisition_times,
        "order.modality": order.check_order_modality,
        "order.body-part": order.check_order_body_part,
        "order.laterality": order.check_laterality,
        "order.missing": order.check_order_missing,
        "order.imaging-study": order.check_imaging_study,
        "device.known": device.check_device_known,
        "device.in-record": device.check_device_in_record,
        "device.uid-roots": device.check_uid_roots,
        "device.toolkit": device.check_written_by_toolkit,
        "device.acquisition-attributes": device.check_acquisition_attributes,
        "pixels.values": pixels.check_pixels,
        "duplicate.hash": duplicates.check_duplicates,
        "record.problems": record.check_record_problems,
    }
)
"""Every check by name, in the order ``run_checks`` runs them."""

# A finding's code starts with its check's family (``duplicate.other-patient`` comes from
# ``duplicate.hash``), and each family's checks are neighbours in ``CHECKS``.
_FAMILY_RANK = {name.split(".")[0]: i for i, name in reversed(list(enumerate(CHECKS)))}


def finding_order(finding: Finding) -> tuple[int, int]:
    """Sort key of ``run_checks``' order: most severe first, then by the order of the checks.

    For merging findings of checks run apart (a batch sweep runs the duplicate check last,
    over the whole sweep) into the order one ``run_checks`` call would give them."""
    family = finding.code.split(".")[0]
    if finding.code == "internal.check-failed":
        check = next((str(e.value) for e in finding.evidence if e.reference == "check"), "")
        family = check.split(".")[0]
    return -finding.severity.rank, _FAMILY_RANK.get(family, len(CHECKS))


def run_checks(
    case: Case,
    ctx: CheckContext | None = None,
    *,
    checks: Mapping[str, Check] | None = None,
) -> tuple[Finding, ...]:
    """Run ``checks`` (default: ``CHECKS``) on a case; findings ordered by severity, most severe first.

    Within a severity, findings keep the order of the checks that produced them.
    """
    ctx = ctx if ctx is not None else CheckContext()
    findings: list[Finding] = []
    for name, check in (checks if checks is not None else CHECKS).items():
        try:
            findings.extend(check(case, ctx))
        except Exception as exc:  # one broken check must not sink the others
            logger.warning("check %s failed with %s", name, type(exc).__name__)
            findings.append(
                Finding(
                    "internal.check-failed",
                    Severity.INFO,
                    f"The {name} check could not run ({type(exc).__name__}); its result is missing.",
                    (Evidence("value", "check", name), Evidence("value", "error", type(exc).__name__)),
                )
            )
    return tuple(sorted(findings, key=lambda f: -f.severity.rank))
