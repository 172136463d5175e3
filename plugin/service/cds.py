"""CDS Hooks 2.0.1 over HTTP: discovery, the service calls, and feedback.

- ``GET /cds-services``: the discovery document (`plugin.cds.services`).
- ``POST /cds-services/{id}``: the call. The CDS client's JWT is checked against the
  allow-list with ``aud`` = the exact URL called (`plugin.cds.auth`); the record comes
  from the prefetch, and what is missing from ``fhirServer`` with ``fhirAuthorization``
  (412 when neither is there, as the specification says); each study the hook checks is
  answered from the store or scored now within ``cds_deadline_ms``; past it the call
  answers with an info card that the check is running, and the next call shows the result.
- ``POST /cds-services/{id}/feedback``: accepted and overridden outcomes, with their
  reasons, stored and tied to the result each Card came from.

Every call and feedback is audited (the client's ``iss``/``sub``, the hook instance, the
results, the model version), never with patient data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from connectors.errors import ConnectorError
from connectors.http import RetryPolicy, Timeouts
from plugin.cds.cards import CardOptions, cards_for, consistent_card, running_card
from plugin.cds.models import Card, CdsResponse, parse_feedback, parse_request
from plugin.cds.prefetch import load_prefetch
from plugin.cds.services import CdsService, discovery, find_service
from plugin.errors import CdsRequestInvalid, FieldProblem
from plugin.service.engine import Checked
from plugin.service.state import ServiceState, get_state
from plugin.store import Actor, ActorKind, AuditAction, CardIndicator, CardKind, IssuedCard, OverrideReason

__all__ = ["CdsCaller", "call_service", "cds_caller", "discovery_document", "feedback", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/cds-services", tags=["CDS Hooks"])

#: FHIR queries a hook makes for missing prefetch: quick, one retry, so the call stays near 500 ms.
_FHIR_TIMEOUTS = Timeouts(connect=2.0, read=5.0)
_FHIR_RETRY = RetryPolicy(attempts=2)
_URGENCY = {"critical": 2, "warning": 1, "info": 0}


@dataclass(frozen=True)
class CdsCaller:
    """An authenticated CDS client (its ``iss`` and ``sub``), or anonymous with --insecure-no-auth."""

    actor: Actor
    sub: str | None = None


async def cds_caller(request: Request, authorization: str | None = Header(default=None)) -> CdsCaller:
    """Check the call's bearer JWT; the audience is the exact URL the client called."""
    state = get_state(request)
    verifier = state.cds_verifier
    if verifier is None:  # --insecure-no-auth
        return CdsCaller(Actor(ActorKind.ANONYMOUS))
    audience = state.public_base(request) + request.url.path
    try:
        claims = await verifier.verify(authorization, audience)
    except Exception as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        logger.info("CDS call refused: %s", reason)
        await state.audit(
            Actor(ActorKind.CDS_CLIENT), AuditAction.CDS_CALL, status=401, detail={"refused": str(reason)}
        )
        raise
    return CdsCaller(Actor(ActorKind.CDS_CLIENT, claims.iss), claims.sub)


@router.get("", summary="CDS Hooks discovery: the services offered")
async def discovery_document() -> dict[str, Any]:
    return discovery().to_json()


def _card_options(state: ServiceState, request: Request) -> CardOptions:
    base = state.public_base(request)
    return CardOptions(
        review_url=f"{base}/review/studies/{{study_instance_uid}}",
        source_url=f"{base}/cds-services",
        smart_launch_url=state.settings.smart_app_url,
        say_consistent=state.settings.say_consistent,
    )


async def _json_body(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CdsRequestInvalid(
            "the body is not JSON", [FieldProblem("body", "must be a JSON object")]
        ) from None


@router.post(
    "/{service_id}",
    summary="Call a CDS Service",
    responses={
        400: {"description": "not a CDS Hooks 2.0.1 request (OperationOutcome)"},
        401: {"description": "no valid CDS client JWT (OperationOutcome)"},
        404: {"description": "no such service (OperationOutcome)"},
        412: {"description": "the FHIR data needed was neither prefetched nor obtainable (OperationOutcome)"},
    },
)
async def call_service(
    service_id: str,
    request: Request,
    caller: CdsCaller = Depends(cds_caller),
    state: ServiceState = Depends(get_state),
) -> JSONResponse:
    started = time.perf_counter()
    deadline = state.settings.cds_deadline_ms / 1000.0
    service = _service(state, service_id)
    call = parse_request(await _json_body(request))
    prefetched = await load_prefetch(call, service, timeouts=_FHIR_TIMEOUTS, retry=_FHIR_RETRY)
    patient_id = getattr(prefetched.context, "patientId", None)
    results: list[Checked] = []
    pending = unavailable = 0
    for selected in prefetched.studies:
        remaining = deadline - (time.perf_counter() - started)
        try:
            checked = await state.engine.check_study(
                selected.study_instance_uid, record=prefetched.record, source="cds", deadline_s=remaining
            )
        except ConnectorError as exc:  # the study is not on the PACS, the PACS is down: no card for it
            logger.warning("CDS call: a study could not be checked (%s)", type(exc).__name__)
            unavailable += 1
            continue
        if checked is None:
            pending += 1
            state.metrics.lookups.labels("deadline").inc()
            continue
        state.metrics.lookups.labels("hit" if checked.cached else "miss").inc()
        if not checked.cached:
            state.metrics.observe_result(checked.result, "cds")
        results.append(checked)
    options = _card_options(state, request)
    studies = {s.study_instance_uid: s.study for s in prefetched.studies}
    issued: list[tuple[Card, str | None, str]] = []
    for checked in results:
        study = studies.get(checked.result.case.study_instance_uid)
        for card in cards_for(checked.result, options, patient_id=patient_id, study=study):
            if checked.result.flagged:
                issued.append((card, checked.id, "flag"))
    issued.sort(key=lambda item: -_URGENCY[item[0].indicator])
    if not issued and results and options.say_consistent:
        only = results[0].id if len(results) == 1 else None
        issued.append(
            (consistent_card([c.result for c in results], options, studies.values()), only, "consistent")
        )
    if pending:
        issued.append((running_card(options, pending), None, "running"))
    await asyncio.to_thread(
        state.store.record_cards,
        [
            IssuedCard(
                card_uuid=str(card.uuid),
                service_id=service.id,
                hook_instance=str(call.hookInstance)[:255],
                result_id=result_id,
                kind=CardKind(kind),
                indicator=CardIndicator(card.indicator),
            )
            for card, result_id, kind in issued
            if card.uuid is not None
        ],
    )
    for checked in results:
        await state.audit(
            caller.actor,
            AuditAction.CDS_CALL,
            result_id=checked.id,
            study_instance_uid=checked.result.case.study_instance_uid,
            detail={"service": service.id, "hookInstance": str(call.hookInstance), "cached": checked.cached},
        )
    if not results:
        await state.audit(
            caller.actor,
            AuditAction.CDS_CALL,
            detail={
                "service": service.id,
                "hookInstance": str(call.hookInstance),
                "studies": len(prefetched.studies),
                "pending": pending,
                "unavailable": unavailable,
            },
        )
    response = CdsResponse(cards=[card for card, _, _ in issued])
    return JSONResponse(response.to_json())


def _service(state: ServiceState, service_id: str) -> CdsService:
    return find_service(service_id, state.cds_services)


@router.post(
    "/{service_id}/feedback",
    summary="Feedback on the cards of a CDS Service",
    responses={
        400: {"description": "not a CDS Hooks feedback (OperationOutcome)"},
        401: {"description": "no valid CDS client JWT (OperationOutcome)"},
        404: {"description": "no such service (OperationOutcome)"},
    },
)
async def feedback(
    service_id: str,
    request: Request,
    caller: CdsCaller = Depends(cds_caller),
    state: ServiceState = Depends(get_state),
) -> JSONResponse:
    service = _service(state, service_id)
    items = parse_feedback(await _json_body(request)).feedback
    stored = 0
    for i, item in enumerate(items):
        card = await asyncio.to_thread(state.store.card, item.card)
        reason = item.overrideReason.reason if item.overrideReason is not None else None
        record = partial(
            state.store.record_feedback,
            service_id=service.id,
            card_uuid=item.card,
            outcome=item.outcome,
            outcome_timestamp=item.outcomeTimestamp,
            accepted_suggestions=[s.id for s in item.acceptedSuggestions or []],
            override_reason=OverrideReason(reason.code, reason.system, reason.display) if reason else None,
            user_comment=item.overrideReason.userComment if item.overrideReason is not None else None,
            client_iss=caller.actor.id,
            client_sub=caller.sub,
            result_id=card.result_id if card is not None else None,
        )
        try:
            await asyncio.to_thread(record)
        except ValueError as exc:
            problem = FieldProblem(f"feedback[{i}]", str(exc))
            raise CdsRequestInvalid("the feedback is inconsistent", [problem]) from None
        stored += 1
        await state.audit(
            caller.actor,
            AuditAction.FEEDBACK,
            result_id=card.result_id if card is not None else None,
            detail={
                "service": service.id,
                "card": item.card,
                "outcome": item.outcome,
                "known_card": card is not None,
            },
        )
    return JSONResponse({"stored": stored})
