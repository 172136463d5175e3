"""Record snapshots: the patient's record as it was when a study was scored, kept with the result.

A :class:`Timeline` is a small, serialisable copy of the part of a
`connectors.domain.PatientRecord` an investigator reads beside the image: each ``Observation``
(laboratory results and vital signs, with their reference ranges and interpretation), each
``Condition`` (onset, abatement), ``MedicationRequest``/``MedicationStatement``, ``Procedure``,
imaging ``ServiceRequest`` (the order), ``DiagnosticReport``, ``Encounter`` and ``ImagingStudy``,
as a :class:`TimelineEntry` with its date, its kind, its FHIR reference (``"Observation/<id>"``,
as the result's findings and contributions name it), a display label, and its value, unit and
reference range where it has one. It is evidence for a referral: the FHIR server may change, and
an upload's Bundle is gone once it is scored, so the review page and the case report draw the
timeline from the snapshot, never from the live record.

Kept: entries whose dates come within ``window_days`` of the study (an interval, such as a
medication's, counts when it overlaps), every ``Condition`` whatever its dates, and entries
without a date; at most ``max_entries``, those nearest the study first. ``omitted`` counts what
was left out. Names, identifiers and the birth date are not copied: the patient is named by the
FHIR Patient id only, with sex and age at the study.

The store saves a snapshot with its result (`plugin.store.Store.save_result`,
`~plugin.store.Store.save_sweep_results`) and reads it back with
`~plugin.store.Store.timeline`. Snapshots hold patient data: never log their content.

Dates are kept as they were given (FHIR ``dateTime`` values usually with an offset, DICOM's
naive); ordering takes a naive one as UTC, which is right to within the site's UTC offset.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from connectors.domain import (
    Case,
    Coding,
    Condition,
    DiagnosticReport,
    Encounter,
    ImagingOrder,
    ImagingStudyRecord,
    LabResult,
    Medication,
    PatientRecord,
    Procedure,
)
from fusion.checks.dates import study_datetime

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_WINDOW_DAYS",
    "TIMELINE_SCHEMA",
    "EntryKind",
    "Timeline",
    "TimelineEntry",
    "as_utc",
    "case_date",
    "days_between",
]

#: The ``schema`` of a Timeline's JSON.
TIMELINE_SCHEMA = "imaging-crosscheck/timeline/1"

#: Entries more than this many days before or after the study are left out (conditions are not).
DEFAULT_WINDOW_DAYS = 730

#: The most entries a snapshot keeps, those nearest the study first.
DEFAULT_MAX_ENTRIES = 1000

#: The longest text (a report's conclusion, a label) a snapshot keeps, in characters.
MAX_TEXT = 600

#: Observation.interpretation codes (v3 ObservationInterpretation) that mean "outside the range".
_ABNORMAL = frozenset({"H", "HH", "HU", "L", "LL", "LU", "A", "AA", ">", "<", "POS", "DET"})

_ENCOUNTER_CLASS = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "IMP": "inpatient",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "OBSENC": "observation",
    "PRENC": "pre-admission",
    "SS": "short stay",
    "VR": "virtual",
    "HH": "home health",
    "FLD": "field",
}


class EntryKind(StrEnum):
    """What a timeline entry is, and the FHIR resource it came from."""

    LAB = "lab"  # Observation, category laboratory (or any other but vital-signs)
    VITAL = "vital"  # Observation, category vital-signs
    CONDITION = "condition"  # Condition
    MEDICATION = "medication"  # MedicationRequest, MedicationStatement
    PROCEDURE = "procedure"  # Procedure
    ORDER = "order"  # ServiceRequest (imaging)
    REPORT = "report"  # DiagnosticReport
    ENCOUNTER = "encounter"  # Encounter
    IMAGING_STUDY = "imaging-study"  # ImagingStudy

    @property
    def measured(self) -> bool:
        """Whether entries of this kind carry values to plot (labs and vital signs)."""
        return self in (EntryKind.LAB, EntryKind.VITAL)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one (DICOM's) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def days_between(earlier: datetime, later: datetime) -> float:
    """``later - earlier`` in days (a naive datetime taken as UTC)."""
    return (as_utc(later) - as_utc(earlier)).total_seconds() / 86400.0


@dataclass(frozen=True)
class TimelineEntry:
    """One record item: ``kind``, its FHIR ``reference`` (``"Observation/<id>"``), a display
    ``label``, and its ``date`` (``effectiveDateTime``, onset, ``authoredOn``, ``performed``, the
    start of a period); ``end`` closes an interval (abatement, a medication's or an Encounter's
    end). ``code`` is ``"system|code"`` (LOINC for an Observation: what groups a lab's values).
    ``value``/``value_text``, ``unit`` (UCUM), ``low``/``high``/``range_text`` (the
    ``referenceRange``) and ``interpretation`` (H, L, N, ...) are an Observation's; ``status`` is
    the resource's status; ``detail`` says the rest in words (a report's conclusion, an order's
    reason and accession number)."""

    kind: EntryKind
    reference: str
    label: str
    date: datetime | None = None
    end: datetime | None = None
    code: str | None = None
    value: float | None = None
    value_text: str | None = None
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    range_text: str | None = None
    interpretation: str | None = None
    status: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EntryKind(self.kind))
        if not self.reference or "/" not in self.reference:
            raise ValueError(f"a timeline entry's reference is 'ResourceType/id', not {self.reference!r}")

    @property
    def out_of_range(self) -> bool | None:
        """Whether the value lies outside its reference range: from the value and the range when
        both are known, else from the interpretation code; ``None`` when neither says."""
        if self.value is not None and (self.low is not None or self.high is not None):
            return (self.low is not None and self.value < self.low) or (
                self.high is not None and self.value > self.high
            )
        if self.interpretation:
            return self.interpretation.upper() in _ABNORMAL
        return None

    @property
    def range_label(self) -> str | None:
        """The reference range in words: ``"4 to 11"``, ``"≥ 60"``, ``"≤ 5"``, or its text."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"≥ {self.low:g}"
        if self.high is not None:
            return f"≤ {self.high:g}"
        return self.range_text

    @property
    def value_label(self) -> str:
        """The value with its unit, or its text; empty when there is neither."""
        if self.value is not None:
            return f"{self.value:g} {self.unit}" if self.unit else f"{self.value:g}"
        return self.value_text or ""

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON (``None`` fields left out; dates ISO 8601)."""
        out: dict[str, Any] = {}
        for name in _ENTRY_FIELDS:  # a sweep writes some 60 entries a study: no fields() call each
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["kind"] = self.kind.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TimelineEntry:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for name in ("date", "end"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        for name in ("value", "low", "high"):
            if values.get(name) is not None:
                values[name] = float(values[name])
        return cls(**values)


_ENTRY_FIELDS = tuple(f.name for f in fields(TimelineEntry))


@dataclass(frozen=True)
class Timeline:
    """The record snapshot of one scored study (see the module docstring).

    ``study_date`` is the study's (StudyDate/StudyTime, else its series' or acquisitions', else
    its order's or report's date); ``has_record`` is False when the study was scored without a
    record (then there are no entries). ``sex`` is the Patient's administrative gender and
    ``age_years`` the age at the study; ``deceased`` the Patient's ``deceasedDateTime``.
    ``entries`` are kept in date order (undated ones last); ``window_days`` and ``omitted`` say
    what was left out."""

    study_instance_uid: str
    patient_id: str | None
    study_date: datetime | None
    entries: tuple[TimelineEntry, ...] = ()
    has_record: bool = True
    sex: str | None = None
    age_years: int | None = None
    deceased: datetime | None = None
    window_days: int | None = DEFAULT_WINDOW_DAYS
    omitted: int = 0
    schema: str = field(default=TIMELINE_SCHEMA)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(sorted(self.entries, key=_order)))
        if self.schema != TIMELINE_SCHEMA:
            raise ValueError(
                f"a timeline of schema {self.schema!r} cannot be read here (this version reads "
                f"{TIMELINE_SCHEMA}): upgrade imaging-crosscheck"
            )

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_case(
        cls,
        case: Case,
        *,
        window_days: int | None = DEFAULT_WINDOW_DAYS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> Timeline:
        """The snapshot of a linked `Case`: its record around its study's date. A case without a
        record gives a Timeline with ``has_record`` False. Pure and picklable: a sweep's readers
        can call it where they read the case."""
        when = case_date(case)
        if case.record is None:
            return cls(
                case.study_instance_uid,
                case.patient_id,
                when,
                has_record=False,
                window_days=window_days,
            )
        return cls.from_record(
            case.record,
            study_instance_uid=case.study_instance_uid,
            study_date=when,
            window_days=window_days,
            max_entries=max_entries,
        )

    @classmethod
    def from_record(
        cls,
        record: PatientRecord,
        *,
        study_instance_uid: str,
        study_date: datetime | None,
        window_days: int | None = DEFAULT_WINDOW_DAYS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> Timeline:
        """The snapshot of ``record`` around ``study_date`` (every entry when it is None, or
        ``window_days`` is None)."""
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 or more, not {max_entries}")
        if window_days is not None and window_days < 0:
            raise ValueError(f"window_days must be 0 or more (or None: no window), not {window_days}")
        every = list(_entries(record))
        kept = [e for e in every if _within(e, study_date, window_days)]
        if len(kept) > max_entries:
            kept.sort(key=lambda e: _distance(e, study_date))
            kept = kept[:max_entries]
        patient = record.patient
        age = None
        if patient.birth_date is not None and study_date is not None:
            born = patient.birth_date
            day = study_date.date()
            age = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
        return cls(
            study_instance_uid=study_instance_uid,
            patient_id=patient.id,
            study_date=study_date,
            entries=tuple(kept),
            sex=patient.gender,
            age_years=age,
            deceased=patient.deceased,
            window_days=window_days,
            omitted=len(every) - len(kept),
        )

    # -- reading ----------------------------------------------------------------------------

    def of_kind(self, *kinds: EntryKind | str) -> tuple[TimelineEntry, ...]:
        """The entries of these kinds, in date order."""
        wanted = {EntryKind(k) for k in kinds}
        return tuple(e for e in self.entries if e.kind in wanted)

    def days_from_study(self, moment: datetime | None) -> float | None:
        """Days from the study to ``moment`` (negative before it); None when either is unknown."""
        if moment is None or self.study_date is None:
            return None
        return days_between(self.study_date, moment)

    @property
    def references(self) -> frozenset[str]:
        return frozenset(e.reference for e in self.entries)

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "study_date": None if self.study_date is None else self.study_date.isoformat(),
            "has_record": self.has_record,
            "sex": self.sex,
            "age_years": self.age_years,
            "deceased": None if self.deceased is None else self.deceased.isoformat(),
            "window_days": self.window_days,
            "omitted": self.omitted,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        """Read :meth:`to_json`'s output; ``ValueError`` for another schema or a malformed one."""
        if not isinstance(data, dict) or data.get("schema") != TIMELINE_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"not a record snapshot of schema {TIMELINE_SCHEMA} (found {found!r}): it was written "
                "by another version of imaging-crosscheck"
            )
        try:
            return cls(
                study_instance_uid=str(data["study_instance_uid"]),
                patient_id=data.get("patient_id"),
                study_date=_parse(data.get("study_date")),
                entries=tuple(TimelineEntry.from_json(e) for e in data.get("entries", [])),
                has_record=bool(data.get("has_record", True)),
                sex=data.get("sex"),
                age_years=data.get("age_years"),
                deceased=_parse(data.get("deceased")),
                window_days=data.get("window_days"),
                omitted=int(data.get("omitted", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a malformed record snapshot ({type(exc).__name__})") from exc


def case_date(case: Case) -> datetime | None:
    """When the case's study was done: StudyDate/StudyTime (else its series' or acquisitions'),
    else its order's occurrence or authoring date, its report's date, or the ImagingStudy's start."""
    found = study_datetime(case.study)
    if found is not None:
        return found
    for candidate in (
        case.order.occurrence if case.order else None,
        case.order.authored if case.order else None,
        case.report.effective if case.report else None,
        case.report.issued if case.report else None,
        case.imaging_study.started if case.imaging_study else None,
    ):
        if candidate is not None:
            return candidate
    return None


def _parse(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _order(entry: TimelineEntry) -> tuple[int, datetime, str, str]:
    if entry.date is None:
        return (1, datetime.min.replace(tzinfo=UTC), entry.kind.value, entry.reference)
    return (0, as_utc(entry.date), entry.kind.value, entry.reference)


def _distance(entry: TimelineEntry, study_date: datetime | None) -> float:
    """How far an entry lies from the study, in days (0 for undated ones: kept first)."""
    if entry.date is None or study_date is None:
        return 0.0
    start = days_between(study_date, entry.date)
    end = start if entry.end is None else days_between(study_date, entry.end)
    if start <= 0 <= end:
        return 0.0
    return min(abs(start), abs(end))


def _within(entry: TimelineEntry, study_date: datetime | None, window_days: int | None) -> bool:
    if entry.kind is EntryKind.CONDITION or window_days is None:
        return True
    return _distance(entry, study_date) <= window_days


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"


def _code(coding: Coding | None) -> str | None:
    return None if coding is None else f"{coding.system}|{coding.code}"


def _named(codes: Iterable[Coding], text: str | None) -> tuple[str, Coding | None]:
    """A display label for codings (the first with a display, else the text, else the first code)
    and the coding it names."""
    codes = tuple(codes)
    for c in codes:
        if c.display:
            return c.display, c
    first = codes[0] if codes else None
    if text:
        return text, first
    return (first.code if first is not None else "(no code)"), first


def _displays(codes: Iterable[Coding]) -> str:
    return ", ".join(c.display or c.code for c in codes)


def _entries(record: PatientRecord) -> Iterator[TimelineEntry]:
    return itertools.chain(
        map(_lab, record.labs),
        map(_condition, record.conditions),
        map(_medication, record.medications),
        map(_procedure, record.procedures),
        map(_imaging_order, record.orders),
        map(_report, record.reports),
        map(_encounter, record.encounters),
        map(_imaging_study, record.imaging_studies),
    )


def _lab(lab: LabResult) -> TimelineEntry:
    rng = lab.reference_range
    return TimelineEntry(
        kind=EntryKind.VITAL if (lab.category or "") == "vital-signs" else EntryKind.LAB,
        reference=f"Observation/{lab.id}",
        label=_text(lab.code.display or lab.code.code) or lab.code.code,
        date=lab.effective,
        code=_code(lab.code),
        value=lab.value,
        value_text=_text(lab.value_text),
        unit=lab.unit,
        low=None if rng is None else rng.low,
        high=None if rng is None else rng.high,
        range_text=None if rng is None else _text(rng.text),
        interpretation=lab.interpretation,
        status=lab.status,
    )


def _coded(
    kind: EntryKind,
    reference: str,
    codes: Iterable[Coding],
    text: str | None,
    when: datetime | None,
    status: str | None,
    **more: Any,
) -> TimelineEntry:
    """An entry for a coded resource, labelled by its codings (see `_named`)."""
    label, coding = _named(codes, text)
    return TimelineEntry(
        kind=kind,
        reference=reference,
        label=_text(label) or "",
        date=when,
        code=_code(coding),
        status=status,
        **more,
    )


def _condition(condition: Condition) -> TimelineEntry:
    status = condition.clinical_status
    if condition.verification_status in {"refuted", "entered-in-error"}:
        status = condition.verification_status
    return _coded(
        EntryKind.CONDITION,
        f"Condition/{condition.id}",
        condition.codes,
        condition.text,
        condition.onset or condition.recorded,
        status,
        end=condition.abatement,
        detail=f"body site: {_displays(condition.body_site)}" if condition.body_site else None,
    )


def _medication(med: Medication) -> TimelineEntry:
    resource = med.kind if med.kind.startswith("Medication") else "MedicationRequest"
    when, status = med.start, med.status
    return _coded(
        EntryKind.MEDICATION, f"{resource}/{med.id}", med.codes, med.text, when, status, end=med.end
    )


def _procedure(proc: Procedure) -> TimelineEntry:
    reference = f"Procedure/{proc.id}"
    return _coded(EntryKind.PROCEDURE, reference, proc.codes, proc.text, proc.performed, proc.status)


def _imaging_order(order: ImagingOrder) -> TimelineEntry:
    parts = []
    if order.reason_codes:
        parts.append(f"for {_displays(order.reason_codes)}")
    if order.reason_references:
        parts.append(f"reason {', '.join(order.reason_references)}")
    if order.occurrence is not None:
        parts.append(f"to be done {order.occurrence.isoformat(timespec='minutes')}")
    if order.accession_number:
        parts.append(f"accession {order.accession_number}")
    when = order.authored or order.occurrence
    detail = _text("; ".join(parts)) or None
    reference = f"ServiceRequest/{order.id}"
    return _coded(EntryKind.ORDER, reference, order.codes, order.text, when, order.status, detail=detail)


def _report(report: DiagnosticReport) -> TimelineEntry:
    codes = [c for c in report.codes if c.code != "18748-4"] or list(report.codes)  # past the generic code
    conclusion = report.conclusion or _displays(report.conclusion_codes) or None
    when = report.effective or report.issued
    reference = f"DiagnosticReport/{report.id}"
    return _coded(EntryKind.REPORT, reference, codes, None, when, report.status, detail=_text(conclusion))


def _encounter(encounter: Encounter) -> TimelineEntry:
    kind = _ENCOUNTER_CLASS.get(encounter.class_code or "", encounter.class_code or "encounter")
    label = f"{kind} encounter"
    if encounter.types:
        label += f": {_displays(encounter.types)}"
    return TimelineEntry(
        kind=EntryKind.ENCOUNTER,
        reference=f"Encounter/{encounter.id}",
        label=_text(label) or label,
        date=encounter.start,
        end=encounter.end,
        code=None if encounter.class_code is None else f"v3-ActCode|{encounter.class_code}",
        status=encounter.status,
    )


def _imaging_study(study: ImagingStudyRecord) -> TimelineEntry:
    what = " ".join(study.modalities) or "imaging"
    label = f"{what} study" + (f": {study.description}" if study.description else "")
    parts = []
    if study.study_instance_uid:
        parts.append(f"StudyInstanceUID {study.study_instance_uid}")
    if study.accession_number:
        parts.append(f"accession {study.accession_number}")
    return TimelineEntry(
        kind=EntryKind.IMAGING_STUDY,
        reference=f"ImagingStudy/{study.id}",
        label=_text(label) or label,
        date=study.started,
        status=study.status,
        detail="; ".join(parts) or None,
    )
