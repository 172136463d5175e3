"""CDS Hooks Feedback: accepted and overridden outcomes stored with their reasons."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from plugin.errors import ResultNotFound, StoreError
from plugin.store import FeedbackOutcome, OverrideReason, Store, StoredFeedback

CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
SUGGESTION = "e56e1945-20b3-4393-8503-a1a20fd73152"
AT = datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)
REASON = OverrideReason(
    code="image-verified",
    system="https://crosscheck.example/cds-hooks/override-reason",
    display="image verified with the modality",
)


def test_accepted_feedback_round_trip(store: Store, make_result) -> None:
    stored_result = store.save_result(make_result(), source="cds")
    feedback = store.record_feedback(
        service_id="crosscheck-patient-view",
        card_uuid=CARD,
        outcome="accepted",
        accepted_suggestions=[SUGGESTION],
        outcome_timestamp=AT,
        client_iss="https://ehr.example",
        client_sub="ehr-client",
        result_id=stored_result.id,
    )
    assert isinstance(feedback, StoredFeedback)
    assert feedback.outcome is FeedbackOutcome.ACCEPTED
    assert feedback.accepted_suggestions == (SUGGESTION,)
    assert feedback.override_reason is None
    assert feedback.received_at.tzinfo is UTC
    assert store.feedback_for(card_uuid=CARD) == [feedback]
    assert store.feedback_for(result_id=stored_result.id) == [feedback]


def test_overridden_feedback_with_reason_and_comment(store: Store) -> None:
    feedback = store.record_feedback(
        service_id="crosscheck-order-sign",
        card_uuid=CARD,
        outcome=FeedbackOutcome.OVERRIDDEN,
        override_reason=REASON,
        user_comment="checked at the console",
        outcome_timestamp=AT,
    )
    [again] = store.feedback_for(card_uuid=CARD)
    assert again == feedback
    assert again.override_reason == REASON
    assert again.user_comment == "checked at the console"
    assert again.outcome_timestamp == AT
    assert again.accepted_suggestions == ()
    assert again.client_iss is None and again.result_id is None


def test_every_feedback_for_a_card_is_kept_newest_first(store: Store) -> None:
    first = store.record_feedback(service_id="s", card_uuid=CARD, outcome="overridden", outcome_timestamp=AT)
    second = store.record_feedback(
        service_id="s",
        card_uuid=CARD,
        outcome="accepted",
        accepted_suggestions=[SUGGESTION],
        outcome_timestamp=AT,
    )
    store.record_feedback(
        service_id="other", card_uuid="another-card", outcome="overridden", outcome_timestamp=AT
    )
    assert store.feedback_for(card_uuid=CARD) == [second, first]
    assert store.feedback_for(service_id="s", limit=1) == [second]
    assert len(store.feedback_for()) == 3


def test_feedback_naming_an_unknown_result_is_refused(store: Store) -> None:
    with pytest.raises(ResultNotFound, match="result no-such-result") as info:
        store.record_feedback(
            service_id="s",
            card_uuid=CARD,
            outcome="overridden",
            outcome_timestamp=AT,
            result_id="no-such-result",
        )
    assert isinstance(info.value, StoreError)
    assert store.feedback_for() == []


@pytest.mark.parametrize(
    ("outcome", "extra", "message"),
    [
        ("accepted", {"override_reason": REASON}, "overrideReason belongs to an overridden"),
        ("overridden", {"accepted_suggestions": [SUGGESTION]}, "acceptedSuggestions belong to an accepted"),
        ("overridden", {"accepted_suggestions": SUGGESTION}, "not one string"),
        ("dismissed", {}, "'dismissed'"),
        ("overridden", {"outcome_timestamp": datetime(2021, 12, 11, 10, 5)}, "timezone-aware"),
    ],
)
def test_contradictory_feedback_is_refused(store: Store, outcome: str, extra: dict, message: str) -> None:
    arguments = {"service_id": "s", "card_uuid": CARD, "outcome": outcome, "outcome_timestamp": AT, **extra}
    with pytest.raises((ValueError, TypeError), match=message):
        store.record_feedback(**arguments)
    assert store.feedback_for() == []


def test_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        store.feedback_for(limit=0)
