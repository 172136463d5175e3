"""CDS Hooks 2.0.1 models: the specification's own examples, required fields, field problems."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from plugin.cds.models import (
    SUMMARY_MAX,
    Action,
    Card,
    CdsResponse,
    Discovery,
    FeedbackRequest,
    Link,
    OrderSignContext,
    PatientViewContext,
    Service,
    Source,
    field_problems,
    parse_context,
    parse_feedback,
    parse_request,
)
from plugin.errors import CdsRequestInvalid, FieldProblem

EXAMPLES: dict[str, Any] = {
    name: entry["json"]
    for name, entry in json.loads((Path(__file__).parent / "data" / "spec_examples.json").read_text()).items()
}
SOURCE = {"label": "imaging-crosscheck"}


def problems(exc: pytest.ExceptionInfo[CdsRequestInvalid]) -> dict[str, str]:
    return {p.location: p.message for p in exc.value.problems}


def model_problems(model: Any, data: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(data)
    return {p.location: p.message for p in field_problems(exc.value)}


# -- the specification's examples ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["discovery", "discovery_extension"])
def test_discovery_examples_parse_and_round_trip(name: str) -> None:
    discovery = Discovery.model_validate(EXAMPLES[name])
    assert discovery.to_json() == EXAMPLES[name]


def test_patient_view_request_example() -> None:
    request = parse_request(EXAMPLES["request_patient_view"])
    assert request.hook == "patient-view"
    assert request.hookInstance == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert request.fhirServer == "http://hooks.smarthealthit.org:9080"
    assert request.fhirAuthorization is not None
    assert request.fhirAuthorization.token == "some-opaque-fhir-access-token"
    assert request.fhirAuthorization.expires_in == 300
    assert request.prefetch is not None and request.prefetch["patientToGreet"]["id"] == "1288992"
    context = parse_context(PatientViewContext, request.context)
    assert (context.userId, context.patientId, context.encounterId) == (
        "Practitioner/example",
        "1288992",
        "89284",
    )


def test_extension_request_example_keeps_its_extension() -> None:
    request = parse_request(EXAMPLES["request_extension"])
    assert request.extension == {
        "com.example.timestamp": "2017-11-27T22:13:25Z",
        "com.cds-hooks.sandbox.myextension-practitionerspecialty": "gastroenterology",
    }


def test_access_token_stays_out_of_repr_and_dumps() -> None:
    request = parse_request(EXAMPLES["request_patient_view"])
    assert "some-opaque" not in repr(request)
    assert "some-opaque" not in json.dumps(request.model_dump(mode="json"))


@pytest.mark.parametrize("name", ["response", "response_no_cards"])
def test_response_examples_parse_and_round_trip(name: str) -> None:
    response = CdsResponse.model_validate(EXAMPLES[name])
    assert response.to_json() == EXAMPLES[name]


def test_response_example_links_and_override_reasons() -> None:
    response = CdsResponse.model_validate(EXAMPLES["response"])
    smart = response.cards[0].links[2] if response.cards[0].links else None
    assert smart is not None and smart.type == "smart" and smart.appContext
    reasons = response.cards[1].overrideReasons or []
    assert [r.display for r in reasons] == ["Patient refused", "Contraindicated"]


def test_spec_examples_that_omit_required_fields_are_refused() -> None:
    # The specification's autolaunchable example has no indicator, its systemActions example no
    # description; both fields are REQUIRED by the tables.
    assert model_problems(CdsResponse, EXAMPLES["response_autolaunchable"]) == {
        "cards[0].indicator": "Field required"
    }
    assert model_problems(CdsResponse, EXAMPLES["response_system_actions"]) == {
        "systemActions[0].description": "Field required"
    }


@pytest.mark.parametrize("name", ["action_create", "action_update", "action_delete"])
def test_action_examples(name: str) -> None:
    assert Action.model_validate(EXAMPLES[name]).to_json() == EXAMPLES[name]


def test_source_example() -> None:
    source = Source.model_validate(EXAMPLES["source"]["source"])
    assert source.topic is not None and source.topic.display == "Mosquito born virus"


@pytest.mark.parametrize(
    "name", ["feedback_accepted", "feedback_overridden", "feedback_overridden_with_reason"]
)
def test_feedback_examples(name: str) -> None:
    feedback = parse_feedback(EXAMPLES[name]).feedback[0]
    assert feedback.card == EXAMPLES[name]["feedback"][0]["card"]
    assert feedback.outcomeTimestamp.tzinfo is UTC


def test_feedback_example_details() -> None:
    accepted = parse_feedback(EXAMPLES["feedback_accepted"]).feedback[0]
    assert [s.id for s in accepted.acceptedSuggestions or []] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert accepted.outcomeTimestamp == datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)
    overridden = parse_feedback(EXAMPLES["feedback_overridden_with_reason"]).feedback[0]
    assert overridden.overrideReason is not None and overridden.overrideReason.reason is not None
    assert overridden.overrideReason.reason.code == "d7ecf885"  # no display: the client echoes it
    assert overridden.overrideReason.userComment == "A comment entered by the clinician."


# -- requests: required, conditional, tolerant --------------------------------------------------------

REQUEST = {
    "hook": "patient-view",
    "hookInstance": "x-1",
    "context": {"userId": "Practitioner/1", "patientId": "p"},
}


def test_request_required_fields_named() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_request({"fhirAuthorization": {"access_token": "secret-token"}})
    found = problems(exc)
    for location in (
        "hook",
        "hookInstance",
        "context",
        "fhirAuthorization.token_type",
        "fhirAuthorization.scope",
    ):
        assert found[location] == "Field required"
    assert "secret-token" not in str(exc.value)


def test_fhir_server_required_with_authorization() -> None:
    authorization = {
        "access_token": "t",
        "token_type": "bearer",
        "expires_in": 60,
        "scope": "user/*.read",
        "subject": "svc",
    }
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_request({**REQUEST, "fhirAuthorization": authorization})
    assert "fhirServer is REQUIRED" in str(exc.value)
    request = parse_request(
        {**REQUEST, "fhirAuthorization": authorization, "fhirServer": "https://ehr.example/r4"}
    )
    assert request.fhirAuthorization is not None and request.fhirAuthorization.token_type == "Bearer"


def test_request_field_values_checked() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_request(
            {
                **REQUEST,
                "hookInstance": "",
                "fhirServer": "ehr.example/fhir",
                "fhirAuthorization": {
                    "access_token": "",
                    "token_type": "MAC",
                    "expires_in": -1,
                    "scope": "s",
                    "subject": "c",
                },
            }
        )
    found = problems(exc)
    assert set(found) == {
        "hookInstance",
        "fhirServer",
        "fhirAuthorization.access_token",
        "fhirAuthorization.token_type",
        "fhirAuthorization.expires_in",
    }
    assert found["fhirServer"] == "must be an absolute http(s) URL"
    assert found["fhirAuthorization.token_type"] == "must be 'Bearer'"


def test_request_tolerates_unknown_fields_and_null_optionals() -> None:
    request = parse_request({**REQUEST, "fhirServer": None, "prefetch": None, "someFutureField": {"a": 1}})
    assert request.fhirServer is None and request.prefetch is None


def test_context_fields_checked_and_located() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_context(PatientViewContext, {"userId": "example", "patientId": "1/2"})
    assert set(problems(exc)) == {"context.userId", "context.patientId"}


def test_order_sign_context_needs_a_bundle_of_resources() -> None:
    base = {"userId": "Practitioner/1", "patientId": "p"}
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_context(OrderSignContext, base)
    assert problems(exc) == {"context.draftOrders": "Field required"}
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_context(OrderSignContext, {**base, "draftOrders": {"resourceType": "Bundle", "entry": [{}]}})
    assert problems(exc) == {"context.draftOrders": "entry[0] has no resource with a resourceType"}
    draft = EXAMPLES["context_draft_orders"]["context"]["draftOrders"]
    assert parse_context(OrderSignContext, {**base, "draftOrders": draft}).draftOrders == draft


# -- cards: encode strictly ---------------------------------------------------------------------------


def card(**fields: Any) -> dict[str, Any]:
    return {"summary": "s", "indicator": "info", "source": SOURCE, **fields}


def test_summary_is_under_140_characters() -> None:
    assert Card.model_validate(card(summary="x" * SUMMARY_MAX)).summary
    assert model_problems(Card, card(summary="x" * 140)) == {
        "summary": "String should have at most 139 characters"
    }
    assert "summary" in model_problems(Card, card(summary=""))


def test_card_required_and_enumerated_fields() -> None:
    assert model_problems(Card, {}) == {
        "summary": "Field required",
        "indicator": "Field required",
        "source": "Field required",
    }
    assert set(model_problems(Card, card(indicator="urgent", selectionBehavior="all"))) == {
        "indicator",
        "selectionBehavior",
    }


def test_suggestions_need_selection_behavior() -> None:
    suggestion = {"label": "do it", "isRecommended": True}
    found = model_problems(Card, card(suggestions=[suggestion]))
    assert found == {"": "selectionBehavior is REQUIRED when a card has suggestions"}
    assert Card.model_validate(card(suggestions=[suggestion], selectionBehavior="any"))
    found = model_problems(Card, card(suggestions=[suggestion, suggestion], selectionBehavior="at-most-one"))
    assert "at most one suggestion is recommended" in found[""]


def test_override_reasons_need_a_display() -> None:
    reason = {"code": "x", "system": "https://example.org/cs"}
    assert "overrideReasons[0] needs a display" in model_problems(Card, card(overrideReasons=[reason]))[""]


def test_links_are_absolute_and_app_context_is_for_smart() -> None:
    found = model_problems(Link, {"label": "l", "url": "/review/1", "type": "absolute"})
    assert found == {"url": "must be an absolute http(s) URL"}
    found = model_problems(
        Link, {"label": "l", "url": "https://a.example", "type": "absolute", "appContext": "x"}
    )
    assert found == {"": "appContext is only valid for links of type 'smart'"}
    assert model_problems(Link, {"label": "l", "url": "https://a.example", "type": "relative"}).keys() == {
        "type"
    }


def test_actions_need_their_target() -> None:
    assert "needs the FHIR resource" in model_problems(Action, {"type": "create", "description": "d"})[""]
    assert "resourceId" in model_problems(Action, {"type": "delete", "description": "d"})[""]


def test_outgoing_models_refuse_unknown_and_empty_fields() -> None:
    assert model_problems(Source, {"label": "l", "lable": "typo"}) == {
        "lable": "Extra inputs are not permitted"
    }
    assert "links" in model_problems(Card, card(links=[]))
    assert "prefetch" in model_problems(Service, {"hook": "h", "description": "d", "id": "i", "prefetch": {}})
    assert "id" in model_problems(Service, {"hook": "h", "description": "d", "id": "a/b"})


def test_to_json_omits_absent_fields() -> None:
    assert Card.model_validate(card()).to_json() == {"summary": "s", "indicator": "info", "source": SOURCE}


# -- feedback ------------------------------------------------------------------------------------------


def feedback(**fields: Any) -> dict[str, Any]:
    entry = {
        "card": "c-1",
        "outcome": "overridden",
        "outcomeTimestamp": "2024-05-01T10:00:00+02:00",
        **fields,
    }
    return {"feedback": [entry]}


def test_feedback_timestamp_in_utc_and_offset_required() -> None:
    entry = parse_feedback(feedback()).feedback[0]
    assert entry.outcomeTimestamp == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_feedback(feedback(outcomeTimestamp="2024-05-01T10:00:00"))
    assert list(problems(exc)) == ["feedback[0].outcomeTimestamp"]


def test_accepted_feedback_needs_accepted_suggestions() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_feedback(feedback(outcome="accepted"))
    assert problems(exc) == {"feedback[0]": "acceptedSuggestions is REQUIRED for the outcome 'accepted'"}
    with pytest.raises(CdsRequestInvalid):
        parse_feedback(
            feedback(
                outcome="accepted", acceptedSuggestions=[{"id": "s"}], overrideReason={"userComment": "x"}
            )
        )


def test_feedback_outcome_and_override_reason_checked() -> None:
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_feedback(feedback(outcome="ignored", overrideReason={}))
    assert set(problems(exc)) == {"feedback[0].outcome", "feedback[0].overrideReason"}
    with pytest.raises(CdsRequestInvalid) as exc:
        parse_feedback({"feedback": []})
    assert list(problems(exc)) == ["feedback"]
    assert isinstance(parse_feedback(feedback(overrideReason={"userComment": "seen"})), FeedbackRequest)


def test_field_problem_reads_as_location_and_message() -> None:
    assert str(FieldProblem("context.patientId", "Field required")) == "context.patientId: Field required"
