"""Date checks: is the study's date possible given the record around it?

A study cannot precede the patient's birth, follow their death, precede the
order that asked for it (beyond a small tolerance for orders entered after the
fact), follow the report that describes it, or lie in the future. Its images
should be acquired on the study day.

DICOM times are local and naive; FHIR ``dateTime`` values usually carry an
offset. When one side is naive the other is compared by its wall-clock time
(offset dropped), which is right to within the site's UTC offset: the
tolerances (one hour or more) absorb the rest for most sites.
"""

from __future__ import annotations

from datetime import datetime

from connectors.domain import Case, Study
from fusion.checks.context import CheckContext
from fusion.result import Evidence, Finding, Severity

__all__ = [
    "check_acquisition_times",
    "check_study_after_death",
    "check_study_after_report",
    "check_study_before_birth",
    "check_study_before_order",
    "check_study_in_future",
    "study_datetime",
]


def study_datetime(study: Study) -> datetime | None:
    """StudyDate/StudyTime, else the earliest series or acquisition datetime."""
    if study.study_datetime is not None:
        return study.study_datetime
    candidates = [s.series_datetime for s in study.series if s.series_datetime is not None]
    candidates += [i.acquisition_datetime for i in study.instances if i.acquisition_datetime is not None]
    return min(candidates, key=_naive) if candidates else None


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)


def _pair(a: datetime, b: datetime) -> tuple[datetime, datetime]:
    """Make two datetimes comparable (see the module docstring)."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        return _naive(a), _naive(b)
    return a, b


def _span(delta_seconds: float) -> str:
    """A duration in words for messages: "3 hours", "2 days", "4 years"."""
    s = abs(delta_seconds)
    for unit, size in (("year", 365.25 * 86400), ("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{int(s)} seconds"


def _study_evidence(case: Case, when: datetime) -> Evidence:
    return Evidence("dicom", "StudyDate", when.isoformat(), uid=case.study_instance_uid)


def check_study_before_birth(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study is dated before the FHIR Patient's birth date."""
    when = study_datetime(case.study)
    if case.record is None or when is None or case.record.patient.birth_date is None:
        return []
    birth = case.record.patient.birth_date
    if when.date() >= birth:
        return []
    days = (birth - when.date()).days
    return [
        Finding(
            "dates.study-before-birth",
            Severity.CRITICAL,
            f"The study is dated {_span(days * 86400.0)} before the patient's birth date.",
            (
                _study_evidence(case, when),
                Evidence("fhir", f"Patient/{case.record.patient.id}", birth.isoformat()),
                Evidence("value", "days-before-birth", days),
            ),
        )
    ]


def check_study_after_death(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study is dated after the patient's recorded death (beyond one day)."""
    when = study_datetime(case.study)
    if case.record is None or when is None or case.record.patient.deceased is None:
        return []
    study_at, died = _pair(when, case.record.patient.deceased)
    delta = (study_at - died).total_seconds()
    if delta <= ctx.acquisition_tolerance.total_seconds():
        return []
    return [
        Finding(
            "dates.study-after-death",
            Severity.CRITICAL,
            f"The study is dated {_span(delta)} after the patient's recorded death.",
            (
                _study_evidence(case, when),
                Evidence("fhir", f"Patient/{case.record.patient.id}", died.isoformat()),
                Evidence("value", "seconds-after-death", delta),
            ),
        )
    ]


def check_study_before_order(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study started before its ServiceRequest was authored (beyond the tolerance)."""
    when = study_datetime(case.study)
    if case.order is None or case.order.authored is None or when is None:
        return []
    study_at, authored = _pair(when, case.order.authored)
    delta = (authored - study_at).total_seconds()
    if delta <= ctx.order_tolerance.total_seconds():
        return []
    return [
        Finding(
            "dates.study-before-order",
            Severity.CRITICAL,
            f"The study was performed {_span(delta)} before the imaging order was written.",
            (
                _study_evidence(case, when),
                Evidence("fhir", f"ServiceRequest/{case.order.id}", authored.isoformat()),
                Evidence("value", "seconds-before-order", delta),
            ),
        )
    ]


def check_study_after_report(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study is dated after the DiagnosticReport that describes it was issued."""
    when = study_datetime(case.study)
    if case.report is None or case.report.issued is None or when is None:
        return []
    study_at, issued = _pair(when, case.report.issued)
    delta = (study_at - issued).total_seconds()
    if delta <= ctx.report_tolerance.total_seconds():
        return []
    return [
        Finding(
            "dates.study-after-report",
            Severity.CRITICAL,
            f"The study is dated {_span(delta)} after its radiology report was issued.",
            (
                _study_evidence(case, when),
                Evidence("fhir", f"DiagnosticReport/{case.report.id}", issued.isoformat()),
                Evidence("value", "seconds-after-report", delta),
            ),
        )
    ]


def check_study_in_future(case: Case, ctx: CheckContext) -> list[Finding]:
    """The study (or an acquisition in it) is dated after ``ctx.now`` (beyond the tolerance)."""
    if ctx.now is None:
        return []
    stamps: list[tuple[Evidence, datetime]] = []
    when = study_datetime(case.study)
    if when is not None:
        stamps.append((_study_evidence(case, when), when))
    for inst in case.study.instances:
        if inst.acquisition_datetime is not None:
            ev = Evidence(
                "dicom",
                "AcquisitionDateTime",
                inst.acquisition_datetime.isoformat(),
                uid=inst.sop_instance_uid,
            )
            stamps.append((ev, inst.acquisition_datetime))
    late: list[tuple[Evidence, float]] = []
    for ev, stamp in stamps:
        at, now = _pair(stamp, ctx.now)
        delta = (at - now).total_seconds()
        if delta > ctx.future_tolerance.total_seconds():
            late.append((ev, delta))
    if not late:
        return []
    worst = max(d for _, d in late)
    return [
        Finding(
            "dates.study-in-future",
            Severity.CRITICAL,
            f"The study is dated up to {_span(worst)} in the future.",
            (*(ev for ev, _ in late[:5]), Evidence("value", "seconds-in-future", worst)),
        )
    ]


def check_acquisition_times(case: Case, ctx: CheckContext) -> list[Finding]:
    """Images acquired more than ``ctx.acquisition_tolerance`` outside the study day."""
    when = study_datetime(case.study)
    if when is None:
        return []
    day_start = datetime.combine(when.date(), datetime.min.time(), tzinfo=when.tzinfo)
    day_end = datetime.combine(when.date(), datetime.max.time(), tzinfo=when.tzinfo)
    tol = ctx.acquisition_tolerance.total_seconds()
    outside: list[tuple[Evidence, float]] = []
    for inst in case.study.instances:
        acq = inst.acquisition_datetime
        if acq is None:
            continue
        a, start = _pair(acq, day_start)
        a, end = _pair(acq, day_end)
        off = max((start - a).total_seconds(), (a - end).total_seconds(), 0.0)
        if off > tol:
            outside.append(
                (Evidence("dicom", "AcquisitionDateTime", acq.isoformat(), uid=inst.sop_instance_uid), off)
            )
    if not outside:
        return []
    worst = max(o for _, o in outside)
    return [
        Finding(
            "dates.acquisition-outside-study",
            Severity.WARNING,
            f"{len(outside)} image(s) were acquired up to {_span(worst)} outside the study day.",
            (
                _study_evidence(case, when),
                *(ev for ev, _ in outside[:5]),
                Evidence("value", "images-outside-study-day", len(outside)),
            ),
        )
    ]
