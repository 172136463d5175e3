"""Cards from CrossCheckResults: summaries, indicators, links, override reasons, the review Task."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B.task import Task

from connectors.domain import ImagingStudyRecord
from fusion.result import CaseRef, CrossCheckResult, Evidence, Finding, ModelInfo, Scores, Severity
from plugin.cds.cards import (
    _CONCERNS,
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASONS,
    TOPIC,
    CardOptions,
    cards_for,
    cards_for_studies,
    consistent_card,
    headline,
    indicator_for,
    review_task,
    running_card,
)
from plugin.cds.models import SUMMARY_MAX, Card, CdsResponse

UID = "1.2.826.0.1.3680043.8.498.12345"
OPTIONS = CardOptions(review_url="https://crosscheck.example.org/review/studies/{study_instance_uid}")
SMART = CardOptions(
    review_url="https://crosscheck.example.org/review?study={study_instance_uid}",
    smart_launch_url="https://crosscheck.example.org/smart/launch",
    source_url="https://crosscheck.example.org/about",
    icon_url="https://crosscheck.example.org/icon-100.png",
    task_owner="Organization/radiology",
)
STUDY = ImagingStudyRecord(
    id="is-1", study_instance_uid=UID, started=datetime(2024, 3, 1, 9, 30, tzinfo=UTC), modalities=("CT",)
)
MODEL = ModelInfo("crosscheck-fusion", "0.2.0", "ab" * 32)


def finding(
    code: str, severity: Severity = Severity.CRITICAL, message: str = "Something is off.", *evidence: Evidence
) -> Finding:
    return Finding(code, severity, message, evidence)


def result(
    *findings: Finding,
    flagged: bool = True,
    uid: str = UID,
    consistency: float | None = 0.2,
    synthetic: float | None = 0.1,
    overall: float = 0.8,
) -> CrossCheckResult:
    return CrossCheckResult(
        case=CaseRef("p-1", uid, "ACC-1"),
        scores=Scores(consistency=consistency, synthetic=synthetic, overall=overall),
        flagged=flagged,
        threshold=0.5,
        findings=findings,
        model=MODEL,
    )


WRONG_PATIENT = result(
    finding(
        "identity.birth-date-mismatch",
        Severity.CRITICAL,
        "DICOM PatientBirthDate differs from the FHIR Patient's birth date by 3 years.",
        Evidence("dicom", "PatientBirthDate", "19610412", uid=UID),
        Evidence("fhir", "Patient/p-1"),
    ),
    finding(
        "identity.patient-id-mismatch",
        Severity.CRITICAL,
        "Its DICOM PatientID matches none of the patient's identifiers.",
        Evidence("dicom", "PatientID", "OTHER-MRN-77", uid=UID),
    ),
    finding("device.unknown", Severity.WARNING, "A device | not in the *site* list."),
    finding("model.synthetic", Severity.WARNING, "Looks edited.", Evidence("value", "p_synthetic", 0.81)),
    finding("record.problems", Severity.INFO, "1 resource(s) of the record did not validate."),
    synthetic=0.81,
    overall=0.93,
)


def only(cards: list[Card]) -> Card:
    assert len(cards) == 1
    return cards[0]


# -- one study ------------------------------------------------------------------------------------------


def test_no_card_when_not_flagged() -> None:
    assert cards_for(result(flagged=False, overall=0.1), OPTIONS) == []


def test_consistent_card_when_configured() -> None:
    options = CardOptions(review_url=OPTIONS.review_url, say_consistent=True)
    card = only(cards_for(result(flagged=False, overall=0.1, consistency=0.97), options, study=STUDY))
    assert card.indicator == "info"
    assert card.summary == "Image check (CT, 2024-03-01): consistent with this patient's record."
    assert card.suggestions is None and card.overrideReasons is None
    assert card.detail is not None and "| Image fits the record | 0.97 |" in card.detail


def test_flagged_card_reads_in_five_seconds() -> None:
    card = only(cards_for(WRONG_PATIENT, OPTIONS, patient_id="p-1", study=STUDY))
    assert card.indicator == "critical"
    assert card.summary == (
        "Image check (CT, 2024-03-01): the image may belong to another patient (+2 more concerns); "
        "review before relying on it."
    )
    assert len(card.summary) < 140


def test_detail_has_evidence_scores_and_model() -> None:
    detail = only(cards_for(WRONG_PATIENT, OPTIONS, study=STUDY)).detail or ""
    assert detail.startswith("**Why:** Flagged for review")
    assert "| Needs review | 0.93 | flagged at 0.50 or more |" in detail
    assert "| Image generated or edited | 0.81 |" in detail
    assert "Calibrated" in detail
    assert "(`identity.birth-date-mismatch`; evidence: DICOM PatientBirthDate, `Patient/p-1`)" in detail
    assert "p\\_synthetic 0.81" in detail
    assert f"StudyInstanceUID `{UID}`" in detail and "ImagingStudy/is-1" in detail
    assert "crosscheck-fusion 0.2.0 (sha256 abababababab)" in detail
    assert "A device \\| not in the \\*site\\* list." in detail  # a | cannot break the markdown
    assert "record.problems" not in detail  # info findings stay out of a flagged card


def test_header_values_stay_out_of_the_chart() -> None:
    text = json.dumps(only(cards_for(WRONG_PATIENT, SMART, patient_id="p-1", study=STUDY)).to_json())
    assert "OTHER-MRN-77" not in text and "19610412" not in text


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        (
            (finding("duplicate.other-patient"), finding("identity.sex-mismatch")),
            "the same image is filed under another patient",
        ),
        (
            (finding("model.synthetic", Severity.WARNING), finding("dates.study-in-future")),
            "the image's date does not fit this patient's record",
        ),
        ((finding("model.inconsistent"),), "the image does not fit this patient's record"),
        (
            (finding("order.modality-mismatch", Severity.WARNING),),
            "the image does not match what was ordered or reported",
        ),
        ((finding("some.future-check"),), "the image needs review"),
        ((), "the image needs review"),
    ],
)
def test_headline_is_the_worst_concern(findings: tuple[Finding, ...], expected: str) -> None:
    assert headline(result(*findings)) == expected


def test_indicator_from_the_worst_severity() -> None:
    assert indicator_for(WRONG_PATIENT) == "critical"
    assert indicator_for(result(finding("device.unknown", Severity.WARNING))) == "warning"
    assert indicator_for(result()) == "warning"  # flagged on the score alone
    assert indicator_for(result(flagged=False)) == "info"


@pytest.mark.parametrize("prefix", [prefix for prefix, _ in _CONCERNS])
def test_summaries_stay_under_140_characters(prefix: str) -> None:
    long_study = ImagingStudyRecord(
        id="x", study_instance_uid=UID, started=STUDY.started, modalities=("MR", "PT", "CT")
    )
    many = [finding(p + "x") for p, _ in _CONCERNS]
    for findings in ([finding(prefix + "x")], [finding(prefix + "x"), *many]):
        card = only(cards_for(result(*findings), OPTIONS, study=long_study))
        assert len(card.summary) <= SUMMARY_MAX
        assert card.summary.startswith("Image check (MR, PT, 2024-03-01): ")


def test_links_are_absolute_and_smart_where_configured() -> None:
    plain = only(cards_for(WRONG_PATIENT, OPTIONS)).links or []
    assert [(link.type, link.url) for link in plain] == [
        ("absolute", f"https://crosscheck.example.org/review/studies/{UID}")
    ]
    links = only(cards_for(result(uid="1.2.3/4?x"), SMART)).links or []
    assert [link.type for link in links] == ["absolute", "smart"]
    assert links[0].url == "https://crosscheck.example.org/review?study=1.2.3%2F4%3Fx"
    for link in links:
        assert urlsplit(link.url).scheme == "https" and urlsplit(link.url).netloc
    assert json.loads(links[1].appContext or "") == {"studyInstanceUid": "1.2.3/4?x"}


def test_source_and_override_reasons() -> None:
    card = only(cards_for(WRONG_PATIENT, SMART))
    assert card.source.label == "imaging-crosscheck" and card.source.topic == TOPIC
    assert card.source.url == "https://crosscheck.example.org/about"
    reasons = card.overrideReasons or []
    assert [r.display for r in reasons] == [
        "Image verified with the modality",
        "Known device change",
        "Correct patient confirmed",
        "Other",
    ]
    assert {r.system for r in reasons} == {OVERRIDE_REASON_SYSTEM} and len(
        {r.code for r in OVERRIDE_REASONS}
    ) == 4


def test_suggestion_creates_a_review_task_that_validates_as_r4() -> None:
    card = only(cards_for(WRONG_PATIENT, SMART, patient_id="p-1", study=STUDY))
    assert card.selectionBehavior == "at-most-one" and card.uuid
    suggestion = only_suggestion = (card.suggestions or [])[0]
    assert only_suggestion.isRecommended and suggestion.uuid and suggestion.uuid != card.uuid
    action = (suggestion.actions or [])[0]
    assert action.type == "create" and isinstance(action.resource, dict)
    task = Task.model_validate(action.resource)
    assert (task.status, task.intent, task.priority) == ("requested", "order", "urgent")
    assert task.for_fhir is not None and task.for_fhir.reference == "Patient/p-1"
    assert task.focus is not None and task.focus.reference == "ImagingStudy/is-1"
    assert task.owner is not None and task.owner.reference == "Organization/radiology"
    assert task.identifier is not None and task.identifier[0].value == f"urn:uuid:{card.uuid}"
    assert "may belong to another patient" in (task.description or "")


def test_task_without_a_known_imaging_study_points_at_the_study_uid() -> None:
    task = review_task(
        result(finding("device.unknown", Severity.WARNING)), now=datetime(2024, 6, 1, tzinfo=UTC)
    )
    parsed = Task.model_validate(task)
    assert parsed.priority == "routine" and parsed.for_fhir is None
    assert task["focus"] == {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"},
    }
    assert task["authoredOn"] == "2024-06-01T00:00:00+00:00"


def test_no_suggestion_when_not_wanted() -> None:
    options = CardOptions(review_url=OPTIONS.review_url, suggest_task=False)
    card = only(cards_for(WRONG_PATIENT, options))
    assert card.suggestions is None and card.selectionBehavior is None


def test_card_json_is_a_valid_response() -> None:
    cards = cards_for(WRONG_PATIENT, SMART, patient_id="p-1", study=STUDY)
    body: dict[str, Any] = CdsResponse(cards=cards).to_json()
    assert CdsResponse.model_validate(body).to_json() == body
    assert "null" not in json.dumps(body)


# -- several studies, and a check still running -----------------------------------------------------------


def test_one_card_per_flagged_study_most_urgent_first() -> None:
    warning = result(finding("device.unknown", Severity.WARNING), uid="1.2.3.2")
    fine = result(flagged=False, uid="1.2.3.3")
    cards = cards_for_studies([warning, fine, WRONG_PATIENT], OPTIONS, studies=[STUDY])
    assert [c.indicator for c in cards] == ["critical", "warning"]
    assert cards[0].summary.startswith("Image check (CT, 2024-03-01)")  # matched by StudyInstanceUID
    assert cards[1].summary.startswith("Image check: the image did not come from a known device")
    assert len({c.uuid for c in cards}) == 2


def test_several_consistent_studies_make_one_info_card() -> None:
    fine = [result(flagged=False, uid=f"1.2.3.{n}") for n in range(3)]
    assert cards_for_studies(fine, OPTIONS) == []
    options = CardOptions(review_url=OPTIONS.review_url, say_consistent=True)
    card = only(cards_for_studies(fine, options))
    assert (
        card.indicator == "info"
        and card.summary == "Image check: 3 studies consistent with this patient's record."
    )
    with pytest.raises(ValueError):
        consistent_card([], options)


def test_running_card_when_scoring_missed_its_deadline() -> None:
    cards = cards_for_studies([WRONG_PATIENT], OPTIONS, pending=1)
    assert [c.indicator for c in cards] == ["critical", "info"]
    assert cards[1].summary == "The image check is still running; reopen the chart to see the result."
    assert running_card(OPTIONS, 3).summary.startswith("The check of 3 studies is still running")
    assert cards_for_studies([], OPTIONS, pending=0) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"review_url": "/review/{study_instance_uid}"},
        {"review_url": "https://crosscheck.example.org/review"},
        {"review_url": OPTIONS.review_url, "smart_launch_url": "launch"},
        {"review_url": OPTIONS.review_url, "task_owner": "radiology"},
    ],
)
def test_card_options_are_checked(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CardOptions(**fields)
