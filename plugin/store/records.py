"""What the store hands back: frozen value objects over its rows, and the enums of its columns.

Enum-valued arguments of :class:`plugin.store.Store` accept the enum or its string; the
database holds the string, so adding a member needs no migration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from fusion.result import CrossCheckResult

__all__ = [
    "Actor",
    "ActorKind",
    "AuditAction",
    "AuditEvent",
    "CardIndicator",
    "CardKind",
    "FeedbackOutcome",
    "IssuedCard",
    "OverrideReason",
    "ResultSource",
    "StoredFeedback",
    "StoredResult",
    "input_fingerprint",
]


class ResultSource(StrEnum):
    """How a result came to be scored: a study arriving (``ingest``), a CDS Hooks call, the REST
    API, a batch sweep, or the command line."""

    INGEST = "ingest"
    CDS = "cds"
    REST = "rest"
    SWEEP = "sweep"
    CLI = "cli"


class FeedbackOutcome(StrEnum):
    """The ``outcome`` of a CDS Hooks Feedback: the user accepted suggestions or overrode the Card."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


class CardKind(StrEnum):
    """What a Card says: a result flagged, a study checked and ``consistent``, or the check still
    ``running`` (the scoring deadline passed)."""

    FLAG = "flag"
    CONSISTENT = "consistent"
    RUNNING = "running"


class CardIndicator(StrEnum):
    """A Card's ``indicator``: its urgency, as the CDS Hooks specification names it."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class ActorKind(StrEnum):
    """Who acted: a CDS Client (its JWT ``iss``), an API key, an OAuth2 client, a logged-in user,
    or the service itself (ingest, sweeps)."""

    CDS_CLIENT = "cds-client"
    API_KEY = "api-key"
    OAUTH = "oauth"
    USER = "user"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"  # a service run with --insecure-no-auth


class AuditAction(StrEnum):
    """What was done. Later areas add members. The case queue records its own changes (``case.*``)
    in the transaction that makes them; the review page records views (``case.read``), logins
    (``user.login``) and the login attempts refused by a lock-out (``user.login-throttled``: too
    many failures for the user name or from the address, `plugin.store.throttle`); a sweep records
    each stored result it amends (``result.amend``, with what it was before)."""

    CASE_COMMENT = "case.comment"
    CASE_LIST = "case.list"
    CASE_OPEN = "case.open"
    CASE_READ = "case.read"
    CASE_REPORT = "case.report"
    CASE_UPDATE = "case.update"
    CDS_CALL = "cds.call"
    FEEDBACK = "feedback"
    INGEST = "ingest"
    LABELS_EXPORT = "labels.export"
    RESULT_AMEND = "result.amend"
    RESULT_CREATE = "result.create"
    RESULT_READ = "result.read"
    USER_CREATE = "user.create"
    USER_DISABLE = "user.disable"
    USER_LOGIN = "user.login"
    USER_LOGIN_THROTTLED = "user.login-throttled"
    USER_LOGOUT = "user.logout"
    USER_PASSWORD = "user.password"
    USER_UNLOCK = "user.unlock"
    WRITEBACK = "writeback"


@dataclass(frozen=True)
class Actor:
    """The caller behind an audit event: its kind and an id (the ``iss``, the key's name, the user
    name); never a patient."""

    kind: ActorKind
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ActorKind):
            object.__setattr__(self, "kind", ActorKind(self.kind))


@dataclass(frozen=True)
class OverrideReason:
    """The ``overrideReason.reason`` Coding of a CDS Hooks Feedback."""

    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True)
class StoredResult:
    """A CrossCheckResult as stored: its id, when it was stored, how it was scored, and the
    identifiers of its input (``inputs``, empty when none were given)."""

    id: str
    created_at: datetime
    result: CrossCheckResult
    source: ResultSource
    inputs: Mapping[str, str]
    input_fingerprint: str | None


@dataclass(frozen=True)
class StoredFeedback:
    """One CDS Hooks Feedback entry for a Card, with the CDS Client that sent it (``client_iss``,
    ``client_sub``; ``None`` when authentication was off) and the result the Card came from when
    it is known."""

    id: int
    service_id: str
    card_uuid: str
    outcome: FeedbackOutcome
    accepted_suggestions: tuple[str, ...]
    override_reason: OverrideReason | None
    user_comment: str | None
    outcome_timestamp: datetime
    client_iss: str | None
    client_sub: str | None
    received_at: datetime
    result_id: str | None


@dataclass(frozen=True)
class IssuedCard:
    """A Card this service answered a hook call with: its ``uuid``, the CDS Service and the
    call's ``hookInstance``, the result it came from, its kind and ``indicator``.

    ``result_id`` is required for a ``flag`` Card; a ``running`` or ``consistent`` one may cover
    no single result (``None``). ``created_at`` is set by the store: ``None`` on the way in.
    """

    card_uuid: str
    service_id: str
    hook_instance: str | None
    result_id: str | None
    kind: CardKind
    indicator: CardIndicator
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CardKind):
            object.__setattr__(self, "kind", CardKind(self.kind))
        if not isinstance(self.indicator, CardIndicator):
            object.__setattr__(self, "indicator", CardIndicator(self.indicator))
        if self.kind is CardKind.FLAG and self.result_id is None:
            raise ValueError(f"flag Card {self.card_uuid} needs the result_id of the result it came from")


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the audit trail; ``id`` grows with every event recorded."""

    id: int
    at: datetime
    actor: Actor
    action: str
    result_id: str | None
    study_instance_uid: str | None
    model_version: str | None
    outcome: str | None
    status_code: int | None
    detail: Mapping[str, Any]


def input_fingerprint(inputs: Mapping[str, str]) -> str:
    """The sha256 (hex) of a result's input identifiers, independent of their order: what a sweep
    looks results up by to know which inputs are done."""
    canonical = json.dumps(dict(sorted(inputs.items())), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
