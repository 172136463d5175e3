"""CDS Hooks 2.0.1 JSON as pydantic models: the request, discovery, the response, and feedback.

Field names are the specification's own (``hookInstance``, ``fhirAuthorization``,
``selectionBehavior``), so a model reads like its table in ``shared/cdshooks_v201.md``.

Decode tolerantly, encode strictly:

- what CDS Clients send (`CdsRequest`, the hook contexts, `FeedbackRequest`) ignores fields a
  later CDS Hooks version adds and accepts ``null`` for an OPTIONAL field as its absence;
  REQUIRED and CONDITIONAL fields are enforced. `parse_request`, `parse_context` and
  `parse_feedback` raise `CdsRequestInvalid` listing every wrong field as a `FieldProblem`
  (``fhirAuthorization.access_token: Field required``), never echoing the values.
- what this service sends (`Discovery`, `CdsResponse` and its `Card` s) refuses unknown
  fields, empty strings and empty arrays (the specification prohibits ``""``, ``[]`` and
  ``{}``), and ``to_json`` omits absent OPTIONAL fields instead of writing ``null``. A
  `Card` ``summary`` is one sentence under 140 characters (at most 139).

The specification reserves the name ``extension`` (a JSON object) for extensions; every object
that may carry one has an ``extension`` field.

The ``access_token`` of ``fhirAuthorization`` is a `pydantic.SecretStr`: it shows as
``**********`` in ``repr``, logs and dumps; `FhirAuthorization.token` gives the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from plugin.errors import CdsRequestInvalid, FieldProblem

__all__ = [
    "SUMMARY_MAX",
    "AcceptedSuggestion",
    "Action",
    "Card",
    "CdsRequest",
    "CdsResponse",
    "Coding",
    "Discovery",
    "Feedback",
    "FeedbackRequest",
    "FhirAuthorization",
    "HookContext",
    "Link",
    "OrderSignContext",
    "OverrideReason",
    "PatientViewContext",
    "ReportSignContext",
    "Service",
    "Source",
    "Suggestion",
    "field_problems",
    "parse_context",
    "parse_feedback",
    "parse_request",
]

SUMMARY_MAX = 139
"""A Card ``summary`` is a "<140-character" sentence."""

_FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _bundle(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Bundle":
        raise ValueError("must be a FHIR Bundle (resourceType 'Bundle')")
    entries = value.get("entry")
    if not isinstance(entries, list) or not entries:
        raise ValueError("must be a Bundle with at least one entry")
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ValueError(f"entry[{n}] has no resource with a resourceType")
    return value


NonEmpty = Annotated[str, StringConstraints(min_length=1)]
FhirId = Annotated[str, StringConstraints(pattern=f"^{_FHIR_ID}$")]
UserReference = Annotated[str, StringConstraints(pattern=f"^[A-Za-z]+/{_FHIR_ID}$")]
AbsoluteUrl = Annotated[str, AfterValidator(_absolute_url)]
FhirBundle = Annotated[dict[str, Any], AfterValidator(_bundle)]
Extension = dict[str, Any]
"""The value of an ``extension`` element: a pre-coordinated JSON object."""


class _Incoming(BaseModel):
    """JSON a CDS Client sends: fields a later CDS Hooks version adds are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Outgoing(BaseModel):
    """JSON this service sends: unknown fields refused; ``to_json`` leaves absent fields out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, OPTIONAL fields without a value omitted (never ``null``)."""
        return self.model_dump(mode="json", exclude_none=True)


class Coding(BaseModel):
    """The CDS Hooks **Coding**: a ``code`` in a ``system``, with an optional ``display``.

    ``display`` is REQUIRED for the ``overrideReasons`` of a Card (`Card` checks it) and
    OPTIONAL elsewhere (a ``topic``, the ``reason`` a CDS Client echoes in feedback).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: NonEmpty
    system: NonEmpty
    display: NonEmpty | None = None


# -- the request -------------------------------------------------------------------------------------


class FhirAuthorization(_Incoming):
    """``fhirAuthorization``: an OAuth 2.0 bearer token for the CDS Client's FHIR server."""

    access_token: Annotated[SecretStr, Field(min_length=1)]
    token_type: NonEmpty
    expires_in: Annotated[int, Field(ge=0)]
    scope: NonEmpty
    subject: NonEmpty
    patient: FhirId | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":  # OAuth 2.0 token types compare case-insensitively
            raise ValueError("must be 'Bearer'")
        return "Bearer"

    @property
    def token(self) -> str:
        """The access token itself (keep it out of logs and messages)."""
        return self.access_token.get_secret_value()


class CdsRequest(_Incoming):
    """The JSON body a CDS Client POSTs to ``{baseUrl}/cds-services/{id}``.

    ``context`` stays a plain object here; the hook's context model (`PatientViewContext`,
    `OrderSignContext`, `ReportSignContext`) reads it through `parse_context`. ``prefetch``
    values stay raw JSON: a value is a FHIR resource, a searchset Bundle, or ``null`` when
    the CDS Client has no data for that key; the prefetch module judges each against its
    template.
    """

    hook: NonEmpty
    hookInstance: NonEmpty
    fhirServer: AbsoluteUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: Annotated[dict[str, Any], Field(min_length=1)]
    prefetch: dict[str, Any] | None = None
    extension: Extension | None = None

    @model_validator(mode="after")
    def _server_with_authorization(self) -> CdsRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is REQUIRED when fhirAuthorization is given")
        return self


class HookContext(_Incoming):
    """The context fields every hook served here has: the user, the patient, the encounter.

    ``userId`` is ``[ResourceType]/[id]`` (``Practitioner/abc``, ``PractitionerRole/123``);
    ``patientId`` and ``encounterId`` are FHIR ids. All three may be prefetch tokens.
    """

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


class PatientViewContext(HookContext):
    """Context of ``patient-view``: the user opened the patient's chart."""


class OrderSignContext(HookContext):
    """Context of ``order-sign``: ``draftOrders`` is the Bundle of the orders about to be signed."""

    draftOrders: FhirBundle


class ReportSignContext(HookContext):
    """Context of the draft ``report-sign`` hook: ``draftReports`` is the Bundle of the
    DiagnosticReport(s) about to be signed (see `plugin.cds.services`)."""

    draftReports: FhirBundle


# -- discovery ----------------------------------------------------------------------------------------


class Service(_Outgoing):
    """One **CDS Service** of the discovery response."""

    hook: NonEmpty
    title: NonEmpty | None = None
    description: NonEmpty
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-._~]+$")]
    prefetch: Annotated[dict[str, NonEmpty], Field(min_length=1)] | None = None
    usageRequirements: NonEmpty | None = None
    extension: Extension | None = None


class Discovery(_Outgoing):
    """``GET {baseUrl}/cds-services``: the services (an empty array when there are none)."""

    services: list[Service]


# -- the response ---------------------------------------------------------------------------------------


class Source(_Outgoing):
    """A Card's **Source**: who says so (``label``), with an optional page, icon and ``topic``."""

    label: NonEmpty
    url: AbsoluteUrl | None = None
    icon: AbsoluteUrl | None = None
    topic: Coding | None = None


class Action(_Outgoing):
    """An **Action** of a suggestion (or a ``systemAction``): create, update or delete a resource."""

    type: Literal["create", "update", "delete"]
    description: NonEmpty
    resource: dict[str, Any] | str | None = None
    resourceId: NonEmpty | None = None
    extension: Extension | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type in ("create", "update"):
            if not isinstance(self.resource, dict) or not self.resource.get("resourceType"):
                raise ValueError(f"a {self.type} action needs the FHIR resource in 'resource'")
        elif self.resourceId is None and self.resource is None:
            raise ValueError("a delete action needs 'resourceId' (a relative reference)")
        return self


class Suggestion(_Outgoing):
    """A **Suggestion**: a button (``label``) whose ``actions`` the CDS Client applies together."""

    label: NonEmpty
    uuid: NonEmpty | None = None
    isRecommended: bool | None = None
    actions: Annotated[list[Action], Field(min_length=1)] | None = None
    extension: Extension | None = None


class Link(_Outgoing):
    """A **Link**: an ``absolute`` URL, or a ``smart`` app launch URL with an optional ``appContext``."""

    label: NonEmpty
    url: AbsoluteUrl
    type: Literal["absolute", "smart"]
    appContext: NonEmpty | None = None
    autolaunchable: bool | None = None
    extension: Extension | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only valid for links of type 'smart'")
        return self


class Card(_Outgoing):
    """A **Card**: ``summary``, ``indicator`` and ``source`` are REQUIRED.

    ``selectionBehavior`` is REQUIRED when there are ``suggestions``; every override reason
    has a ``display``; with ``at-most-one``, at most one suggestion is recommended.
    """

    uuid: NonEmpty | None = None
    summary: Annotated[str, StringConstraints(min_length=1, max_length=SUMMARY_MAX)]
    detail: NonEmpty | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: Annotated[list[Suggestion], Field(min_length=1)] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: Annotated[list[Coding], Field(min_length=1)] | None = None
    links: Annotated[list[Link], Field(min_length=1)] | None = None
    extension: Extension | None = None

    @model_validator(mode="after")
    def _conditional_fields(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is REQUIRED when a card has suggestions")
        if self.selectionBehavior == "at-most-one" and self.suggestions:
            if sum(bool(s.isRecommended) for s in self.suggestions) > 1:
                raise ValueError(
                    "with selectionBehavior 'at-most-one', at most one suggestion is recommended"
                )
        for n, reason in enumerate(self.overrideReasons or ()):
            if reason.display is None:
                raise ValueError(f"overrideReasons[{n}] needs a display")
        return self


class CdsResponse(_Outgoing):
    """The 200 answer of a service call: ``cards`` (empty for no guidance), optional ``systemActions``."""

    cards: list[Card]
    systemActions: Annotated[list[Action], Field(min_length=1)] | None = None


# -- feedback -------------------------------------------------------------------------------------------


class AcceptedSuggestion(_Incoming):
    """An **AcceptedSuggestion**: the ``uuid`` of the suggestion the user accepted, as ``id``."""

    id: NonEmpty


class OverrideReason(_Incoming):
    """An **OverrideReason**: the ``reason`` the user picked and/or their ``userComment``."""

    reason: Coding | None = None
    userComment: NonEmpty | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> OverrideReason:
        if self.reason is None and self.userComment is None:
            raise ValueError("an overrideReason needs a reason or a userComment")
        return self


class Feedback(_Incoming):
    """One **Feedback** entry: what the user did with a Card (``accepted`` or ``overridden``).

    ``outcomeTimestamp`` must carry its offset (RFC 3339); it is held in UTC.
    """

    card: NonEmpty
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime
    extension: Extension | None = None

    @field_validator("outcomeTimestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _outcome_fields(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is REQUIRED for the outcome 'accepted'")
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason goes with the outcome 'overridden', not 'accepted'")
        return self


class FeedbackRequest(_Incoming):
    """``POST {baseUrl}/cds-services/{id}/feedback``: an object holding the ``feedback`` array."""

    feedback: Annotated[list[Feedback], Field(min_length=1)]


# -- parsing ----------------------------------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)
_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def field_problems(exc: ValidationError, prefix: str = "") -> tuple[FieldProblem, ...]:
    """Each error of ``exc`` as a `FieldProblem`: ``feedback[0].outcome``, without the input values."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        location = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                location += f"[{part}]"
            else:
                location += f".{part}" if location else str(part)
        problems.append(FieldProblem(location, _PREFIX.sub("", error["msg"])))
    return tuple(problems)


def _parse(model: type[_M], data: Any, what: str, prefix: str = "") -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CdsRequestInvalid(what, field_problems(exc, prefix)) from None


def parse_request(data: Any) -> CdsRequest:
    """A CDS Service call's JSON body; `CdsRequestInvalid` naming every wrong field."""
    return _parse(CdsRequest, data, "not a CDS Hooks 2.0.1 service request")


def parse_context(model: type[_M], context: Mapping[str, Any]) -> _M:
    """A request's ``context`` read as its hook's context model (fields located as ``context.x``)."""
    return _parse(model, dict(context), "the context is not what the hook defines", prefix="context")


def parse_feedback(data: Any) -> FeedbackRequest:
    """A feedback POST's JSON body; `CdsRequestInvalid` naming every wrong field."""
    return _parse(FeedbackRequest, data, "not a CDS Hooks 2.0.1 feedback request")
