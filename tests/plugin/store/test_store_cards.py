"""The Cards issued: recorded with the result each came from, found again by uuid."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from plugin.errors import DuplicateCard, ResultNotFound, StoreError
from plugin.store import CardIndicator, CardKind, IssuedCard, Store

SERVICE = "crosscheck-patient-view"
HOOK = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
FLAG_CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
RUNNING_CARD = "9f5a1c2e-0a55-4a8f-8e43-5a2b6f1e7d10"
AT = datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)


def _flag(result_id: str, card_uuid: str = FLAG_CARD) -> IssuedCard:
    return IssuedCard(
        card_uuid=card_uuid,
        service_id=SERVICE,
        hook_instance=HOOK,
        result_id=result_id,
        kind=CardKind.FLAG,
        indicator=CardIndicator.CRITICAL,
    )


RUNNING = IssuedCard(
    card_uuid=RUNNING_CARD,
    service_id=SERVICE,
    hook_instance=HOOK,
    result_id=None,
    kind="running",  # type: ignore[arg-type]  # strings are accepted and converted
    indicator="info",  # type: ignore[arg-type]
)


def test_cards_round_trip_with_created_at(store: Store, make_result, clock) -> None:
    result = store.save_result(make_result(), source="cds")
    flag = _flag(result.id)
    issued_at = clock.now  # what the store's clock reads next
    store.record_cards([flag, RUNNING])
    assert store.card(FLAG_CARD) == dataclasses.replace(flag, created_at=issued_at)
    running = store.card(RUNNING_CARD)
    assert running is not None
    assert running.kind is CardKind.RUNNING and running.indicator is CardIndicator.INFO
    assert running.result_id is None
    assert running.created_at == issued_at
    assert store.card("no-such-card") is None


def test_feedback_is_tied_to_the_result_through_the_card(store: Store, make_result) -> None:
    """What the feedback endpoint does: look the Card up, and pass its result on."""
    result = store.save_result(make_result(), source="cds")
    store.record_cards([_flag(result.id)])
    card = store.card(FLAG_CARD)
    assert card is not None
    feedback = store.record_feedback(
        service_id=SERVICE,
        card_uuid=FLAG_CARD,
        outcome="overridden",
        outcome_timestamp=AT,
        result_id=card.result_id,
    )
    assert store.feedback_for(result_id=result.id) == [feedback]


def test_an_unknown_result_is_refused_and_nothing_is_recorded(store: Store, make_result) -> None:
    result = store.save_result(make_result(), source="cds")
    with pytest.raises(ResultNotFound, match="Card other-card names result no-such-result") as info:
        store.record_cards([_flag(result.id), RUNNING, _flag("no-such-result", "other-card")])
    assert isinstance(info.value, StoreError)
    assert store.card(FLAG_CARD) is None and store.card(RUNNING_CARD) is None  # all or none


def test_a_card_recorded_again_is_refused(store: Store, make_result) -> None:
    """A duplicate uuid is a :class:`DuplicateCard` (a ``StoreError``): the database holds it already."""
    result = store.save_result(make_result(), source="cds")
    store.record_cards([_flag(result.id)])
    first = store.card(FLAG_CARD)
    with pytest.raises(DuplicateCard, match=f"Card {FLAG_CARD} is recorded already") as info:
        store.record_cards([RUNNING, _flag(result.id)])
    assert isinstance(info.value, StoreError)
    assert store.card(FLAG_CARD) == first
    assert store.card(RUNNING_CARD) is None


def test_a_uuid_given_twice_in_one_call_is_refused(store: Store) -> None:
    with pytest.raises(DuplicateCard, match=f"Card {RUNNING_CARD} is given twice"):
        store.record_cards([RUNNING, dataclasses.replace(RUNNING, indicator=CardIndicator.WARNING)])
    assert store.card(RUNNING_CARD) is None


def test_no_cards_is_nothing_to_do(store: Store) -> None:
    store.record_cards([])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "flag", "result_id": None}, "flag Card .* needs the result_id"),
        ({"kind": "dismissed"}, "'dismissed'"),
        ({"indicator": "hard-stop"}, "'hard-stop'"),
    ],
)
def test_cards_that_cannot_be_are_refused(fields: dict, message: str) -> None:
    arguments = {**dataclasses.asdict(RUNNING), **fields}
    with pytest.raises(ValueError, match=message):
        IssuedCard(**arguments)


def test_created_at_is_the_stores_to_set(store: Store) -> None:
    with pytest.raises(ValueError, match="the store sets created_at"):
        store.record_cards([dataclasses.replace(RUNNING, created_at=AT)])
    assert store.card(RUNNING_CARD) is None
