"""CDS Hooks Cards from CrossCheckResults: what the clinician sees in the EHR.

`cards_for` gives the Card of one checked study: none when the result is not flagged (or
an info card "consistent" when `CardOptions.say_consistent`), else one Card whose

- ``summary`` (under 140 characters) names the study and the worst concern in clinical words
  ("the image may belong to another patient"), with how many other concerns there are;
- ``indicator`` is ``critical`` when a finding is critical, else ``warning``;
- ``detail`` (GitHub Flavored Markdown) holds `fusion.explain.summary`, the calibrated scores
  and what they mean, the findings with their evidence (references only: a DICOM value may
  name another patient), the StudyInstanceUID and the model version;
- ``source`` is imaging-crosscheck with its topic; ``links`` an absolute link to the study in
  the review page and, when configured, a SMART app launch;
- ``overrideReasons`` are `OVERRIDE_REASONS`; the one suggestion creates a FHIR Task asking
  the imaging department (a radiologist, or `CardOptions.task_owner`) to review the study.

`cards_for_studies` does this for every study a call checked (one Card per flagged study, the
most urgent first) and adds `running_card` when some studies missed the scoring deadline.

The codes are in the project's CodeSystems under `CODE_SYSTEM_BASE`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from connectors.domain import ImagingStudyRecord
from connectors.fhir.extract import validate_resource
from fusion.explain import summary as explain_summary
from fusion.result import CrossCheckResult, Evidence, Finding, Severity
from plugin.cds.models import SUMMARY_MAX, Action, Card, Coding, Link, Source, Suggestion

__all__ = [
    "CODE_SYSTEM_BASE",
    "OVERRIDE_REASONS",
    "OVERRIDE_REASON_SYSTEM",
    "TASK_CODE",
    "TOPIC",
    "CardOptions",
    "cards_for",
    "cards_for_studies",
    "consistent_card",
    "headline",
    "indicator_for",
    "review_task",
    "running_card",
]

CODE_SYSTEM_BASE = "https://imaging-crosscheck.org/fhir/CodeSystem"
"""Canonical base of the project's CodeSystems (override reasons, card topic, task code)."""

OVERRIDE_REASON_SYSTEM = f"{CODE_SYSTEM_BASE}/cds-override-reason"
OVERRIDE_REASONS: tuple[Coding, ...] = tuple(
    Coding(system=OVERRIDE_REASON_SYSTEM, code=code, display=display)
    for code, display in (
        ("verified-with-modality", "Image verified with the modality"),
        ("known-device-change", "Known device change"),
        ("correct-patient-confirmed", "Correct patient confirmed"),
        ("other", "Other"),
    )
)
"""What a clinician may answer when dismissing a card, as CDS Hooks Codings."""

TOPIC = Coding(
    system=f"{CODE_SYSTEM_BASE}/cds-topic",
    code="image-record-consistency",
    display="Consistency of an image with the patient's record",
)
TASK_CODE: dict[str, str] = {
    "system": f"{CODE_SYSTEM_BASE}/task-code",
    "code": "image-review",
    "display": "Review an imaging study flagged by imaging-crosscheck",
}
_RADIOLOGIST = {"system": "http://snomed.info/sct", "code": "66862007", "display": "Radiologist"}

#: (finding code prefix, what it means to a clinician), most telling first.
_CONCERNS: tuple[tuple[str, str], ...] = (
    ("duplicate.other-patient", "the same image is filed under another patient"),
    ("identity.", "the image may belong to another patient"),
    ("model.synthetic", "the image may be AI-generated or edited"),
    ("model.inconsistent", "the image does not fit this patient's record"),
    ("dates.", "the image's date does not fit this patient's record"),
    ("order.", "the image does not match what was ordered or reported"),
    ("duplicate.", "the image repeats another study of this patient"),
    ("device.", "the image did not come from a known device of this site"),
    ("pixels.", "the image's pixel values are implausible"),
    ("model.pixels-unreadable", "the image could not be read, so it was not checked"),
)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
Indicator = Literal["info", "warning", "critical"]
_URGENCY = {"critical": 2, "warning": 1, "info": 0}


def _absolute(url: str | None, what: str) -> None:
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"CardOptions.{what} must be an absolute http(s) URL")


@dataclass(frozen=True)
class CardOptions:
    """How cards are written at this site.

    ``review_url`` is the absolute URL of a study in the review page, with
    ``{study_instance_uid}`` where the StudyInstanceUID goes. ``smart_launch_url`` adds a SMART
    app link. ``say_consistent`` adds an info card when nothing was flagged. ``task_owner`` is
    the relative reference (``Organization/radiology``) that owns the suggested review Task.
    """

    review_url: str
    source_url: str | None = None
    icon_url: str | None = None
    smart_launch_url: str | None = None
    say_consistent: bool = False
    suggest_task: bool = True
    task_owner: str | None = None
    label: str = "imaging-crosscheck"

    def __post_init__(self) -> None:
        for what in ("review_url", "source_url", "icon_url", "smart_launch_url"):
            _absolute(getattr(self, what), what)
        if "{study_instance_uid}" not in self.review_url:
            raise ValueError("CardOptions.review_url needs a {study_instance_uid} placeholder")
        if self.task_owner is not None and not re.fullmatch(
            r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", self.task_owner
        ):
            raise ValueError(
                "CardOptions.task_owner must be a relative reference such as Organization/radiology"
            )

    def source(self) -> Source:
        return Source(label=self.label, url=self.source_url, icon=self.icon_url, topic=TOPIC)

    def case_url(self, study_instance_uid: str) -> str:
        return self.review_url.replace("{study_instance_uid}", quote(study_instance_uid, safe=""))


# -- reading a result ----------------------------------------------------------------------------------


def _concerns(result: CrossCheckResult) -> list[str]:
    """What the result's warning and critical findings mean, worst first, each once."""
    found: dict[str, None] = {}
    for severity in (Severity.CRITICAL, Severity.WARNING):
        for prefix, words in _CONCERNS:
            if any(f.severity is severity and f.code.startswith(prefix) for f in result.findings):
                found.setdefault(words, None)
    return list(found)


def headline(result: CrossCheckResult) -> str:
    """The worst concern of a flagged result in clinical words (``the image may be AI-generated ...``)."""
    concerns = _concerns(result)
    return concerns[0] if concerns else "the image needs review"


def indicator_for(result: CrossCheckResult) -> Indicator:
    """``critical`` for a critical finding, ``warning`` for another flagged result, else ``info``."""
    if result.worst_severity is Severity.CRITICAL:
        return "critical"
    return "warning" if result.flagged else "info"


def _study_words(study: ImagingStudyRecord | None) -> str:
    if study is None:
        return ""
    words = list(study.modalities[:2])
    if study.started is not None:
        words.append(study.started.astimezone(UTC).date().isoformat())
    return f" ({', '.join(words)})" if words else ""


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip(" ,;:") + "…"


def _md(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _probability(value: float | None) -> str:
    return "not scored" if value is None else f"{value:.2f}"


def _scores_table(result: CrossCheckResult) -> list[str]:
    s = result.scores
    return [
        "| Score (calibrated probability) | Value | Meaning |",
        "|---|---|---|",
        f"| Needs review | {_probability(s.overall)} | flagged at {result.threshold:.2f} or more |",
        f"| Image fits the record | {_probability(s.consistency)} | that the image and this patient's record "
        "belong together |",
        f"| Image generated or edited | {_probability(s.synthetic)} | that software produced or altered "
        "the pixels |",
        "",
        "Calibrated: of the studies given a score of 0.80, about 8 in 10 have what the score measures.",
    ]


def _evidence(evidence: Evidence) -> str | None:
    if evidence.kind == "fhir":
        return f"`{evidence.reference}`"
    if evidence.kind == "dicom":
        return f"DICOM {evidence.reference}"
    value = evidence.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{_md(evidence.reference)} {value:g}"
    return None  # text values (another patient's key, a header value) stay out of the chart


def _finding_line(finding: Finding) -> str:
    shown = list(dict.fromkeys(e for e in (_evidence(x) for x in finding.evidence[:6]) if e))
    evidence = f"; evidence: {', '.join(shown)}" if shown else ""
    return f"- **{finding.severity.value.capitalize()}**: {_md(finding.message)} (`{finding.code}`{evidence})"


def _detail(result: CrossCheckResult, study: ImagingStudyRecord | None, *, why: bool) -> str:
    lines = [f"**Why:** {_md(explain_summary(result))}", ""] if why else []
    lines += _scores_table(result)
    findings = [f for f in result.findings if f.severity is not Severity.INFO or not why]
    if findings:
        lines += ["", "**Findings**", *(_finding_line(f) for f in findings)]
    where = f"ImagingStudy/{study.id}, " if study is not None else ""
    lines += ["", f"Study: {where}StudyInstanceUID `{result.case.study_instance_uid}`."]
    if result.model is not None:
        m = result.model
        lines.append(f"Model: {_md(m.name)} {_md(m.version)} (sha256 {m.sha256[:12]}).")
    return "\n".join(lines)


# -- the cards -------------------------------------------------------------------------------------------


def _links(result: CrossCheckResult, options: CardOptions) -> list[Link]:
    uid = result.case.study_instance_uid
    links = [
        Link(label="Review this study in imaging-crosscheck", url=options.case_url(uid), type="absolute")
    ]
    if options.smart_launch_url is not None:
        links.append(
            Link(
                label="Open the imaging-crosscheck review app",
                url=options.smart_launch_url,
                type="smart",
                appContext=json.dumps({"studyInstanceUid": uid}, separators=(",", ":")),
            )
        )
    return links


def review_task(
    result: CrossCheckResult,
    *,
    patient_id: str | None = None,
    study: ImagingStudyRecord | None = None,
    owner: str | None = None,
    card_uuid: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A FHIR R4 Task asking the imaging department to review the study (validated with R4B).

    Its ``focus`` is ``ImagingStudy/<id>`` when ``study`` is known, else a logical reference by
    StudyInstanceUID; ``for`` the FHIR Patient ``patient_id``; ``identifier`` the card's uuid.
    """
    uid = result.case.study_instance_uid
    focus: dict[str, Any] = (
        {"reference": f"ImagingStudy/{study.id}"}
        if study is not None
        else {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}}
    )
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": "urgent" if indicator_for(result) == "critical" else "routine",
        "code": {"coding": [dict(TASK_CODE)], "text": "Review imaging study"},
        "description": (
            f"imaging-crosscheck: {headline(result)}. Check the study against the modality and the "
            "patient's record before relying on it."
        ),
        "focus": focus,
        "authoredOn": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
        "performerType": [{"coding": [dict(_RADIOLOGIST)]}],
    }
    if patient_id is not None:
        task["for"] = {"reference": f"Patient/{patient_id}"}
    if owner is not None:
        task["owner"] = {"reference": owner}
    if card_uuid is not None:
        task["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{card_uuid}"}]
    validate_resource(task)
    return task


def _flag_card(
    result: CrossCheckResult, options: CardOptions, patient_id: str | None, study: ImagingStudyRecord | None
) -> Card:
    concerns = _concerns(result)
    first = concerns[0] if concerns else "the image needs review"
    more = (
        f" (+{len(concerns) - 1} more concern{'s' if len(concerns) > 2 else ''})" if len(concerns) > 1 else ""
    )
    text = f"Image check{_study_words(study)}: {first}{more}; review before relying on it."
    if len(text) > SUMMARY_MAX:
        text = f"Image check{_study_words(study)}: {first}{more}."
    card_uuid = str(uuid.uuid4())
    suggestions = None
    if options.suggest_task:
        task = review_task(
            result, patient_id=patient_id, study=study, owner=options.task_owner, card_uuid=card_uuid
        )
        action = Action(
            type="create",
            description="Create a Task for the imaging department to review the study",
            resource=task,
        )
        suggestions = [
            Suggestion(
                label="Ask the imaging department to review this study",
                uuid=str(uuid.uuid4()),
                isRecommended=True,
                actions=[action],
            )
        ]
    return Card(
        uuid=card_uuid,
        summary=_summary(text),
        detail=_detail(result, study, why=True),
        indicator=indicator_for(result),
        source=options.source(),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=list(OVERRIDE_REASONS),
        links=_links(result, options),
    )


def consistent_card(
    results: Sequence[CrossCheckResult], options: CardOptions, studies: Iterable[ImagingStudyRecord] = ()
) -> Card:
    """The info card "checked, consistent" for results that were not flagged."""
    if not results:
        raise ValueError("consistent_card needs at least one result")
    by_uid = {s.study_instance_uid: s for s in studies}
    if len(results) == 1:
        words = _study_words(by_uid.get(results[0].case.study_instance_uid))
        text = f"Image check{words}: consistent with this patient's record."
    else:
        text = f"Image check: {len(results)} studies consistent with this patient's record."
    detail = "\n\n".join(_detail(r, by_uid.get(r.case.study_instance_uid), why=False) for r in results)
    return Card(
        uuid=str(uuid.uuid4()),
        summary=_summary(text),
        detail=detail,
        indicator="info",
        source=options.source(),
        links=_links(results[0], options) if len(results) == 1 else None,
    )


def running_card(options: CardOptions, pending: int = 1) -> Card:
    """The info card for studies whose check missed the deadline: reopen the chart to see the result."""
    what = "The image check is" if pending == 1 else f"The check of {pending} studies is"
    return Card(
        uuid=str(uuid.uuid4()),
        summary=f"{what} still running; reopen the chart to see the result.",
        detail=(
            "imaging-crosscheck is still comparing the image with this patient's record. The result is "
            "kept: the next time this chart is opened it is shown here, and in the review page at once."
        ),
        indicator="info",
        source=options.source(),
    )


def cards_for(
    result: CrossCheckResult,
    options: CardOptions,
    *,
    patient_id: str | None = None,
    study: ImagingStudyRecord | None = None,
) -> list[Card]:
    """The Card of one study's result: one when flagged, else none (or "consistent" when configured).

    ``patient_id`` is the FHIR Patient id in context (the Task's ``for``); ``study`` the
    ImagingStudy that was checked (its modality and date in the summary, the Task's ``focus``).
    """
    if result.flagged:
        return [_flag_card(result, options, patient_id, study)]
    return [consistent_card([result], options, [study] if study else [])] if options.say_consistent else []


def cards_for_studies(
    results: Iterable[CrossCheckResult],
    options: CardOptions,
    *,
    patient_id: str | None = None,
    studies: Iterable[ImagingStudyRecord] = (),
    pending: int = 0,
) -> list[Card]:
    """The Cards of a call that checked several studies.

    One Card per flagged study, critical before warning; when none is flagged, one
    "consistent" card if `CardOptions.say_consistent`; and `running_card` when ``pending``
    studies missed the scoring deadline. ``studies`` are matched to results by StudyInstanceUID.
    """
    results = list(results)
    by_uid = {s.study_instance_uid: s for s in studies}
    cards = [
        _flag_card(r, options, patient_id, by_uid.get(r.case.study_instance_uid))
        for r in results
        if r.flagged
    ]
    cards.sort(key=lambda c: -_URGENCY[c.indicator])
    if not cards and results and options.say_consistent:
        cards.append(consistent_card(results, options, by_uid.values()))
    if pending > 0:
        cards.append(running_card(options, pending))
    return cards
