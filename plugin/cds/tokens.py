"""Prefetch templates and their prefetch tokens (CDS Hooks 2.0.1, "Prefetch tokens").

A prefetch token is ``{{context.<field>}}``, a root-level context field with a primitive value
that the hook marks as a prefetch token, or one of the user identifiers ``{{userPractitionerId}}``,
``{{userPractitionerRoleId}}``, ``{{userPatientId}}``, ``{{userRelatedPersonId}}``, which come
from ``context.userId`` (``Practitioner/abc`` gives ``userPractitionerId`` ``abc``; the other
three have no value then).

`check_template` refuses a template with any other token when a service is defined.
`render_template` replaces the tokens with the call's values, percent-encoded (a ``/`` kept, so
``{{context.userId}}`` can be a whole read): a value cannot add a search parameter. A token
without a value in this call (an OPTIONAL context field absent, ``userPractitionerId`` while
the user is a PractitionerRole) makes the template unsatisfiable: no one can run it, a CDS
Client MUST NOT send its key, and `render_template` returns ``None``.

`parse_relative_url` reads a rendered template as a FHIR read (``Patient/123``) or a
type-level search (``Observation?patient=123&_count=5``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from pydantic import BaseModel

__all__ = ["USER_TOKENS", "FhirQuery", "check_template", "parse_relative_url", "render_template", "tokens_of"]

USER_TOKENS: dict[str, str] = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
"""The user prefetch tokens and the resource type ``context.userId`` must name for each."""

_TOKEN = re.compile(r"\{\{([^{}]*)\}\}")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def tokens_of(template: str) -> list[str]:
    """The tokens of a template, in order (``context.patientId``, ``userPractitionerId`` ...)."""
    return _TOKEN.findall(template)


def check_template(template: str, context_tokens: Collection[str]) -> None:
    """`ValueError` unless every token of ``template`` is allowed for a hook whose prefetch-token
    context fields are ``context_tokens``, and nothing else in it looks like a token."""
    for token in tokens_of(template):
        field = token.removeprefix("context.")
        if token in USER_TOKENS or (token.startswith("context.") and field in context_tokens):
            continue
        if token.startswith("context.") and "." in field:
            raise ValueError(f"prefetch token {{{{{token}}}}}: only root-level context fields can be tokens")
        allowed = [f"context.{name}" for name in sorted(context_tokens)] + list(USER_TOKENS)
        raise ValueError(f"prefetch token {{{{{token}}}}} is not one of {', '.join(allowed)}")
    rest = _TOKEN.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"prefetch template {template!r} has an unbalanced token delimiter")


def render_template(template: str, context: BaseModel) -> str | None:
    """``template`` with its tokens replaced by the values in ``context``; ``None`` when one has none."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = _token_value(match.group(1), context)
        if found is None:
            missing = True
            return ""
        return quote(found, safe="/")

    rendered = _TOKEN.sub(value, template)
    return None if missing else rendered


def _token_value(token: str, context: BaseModel) -> str | None:
    if token in USER_TOKENS:
        user = getattr(context, "userId", None)
        if isinstance(user, str) and "/" in user:
            rtype, _, rid = user.partition("/")
            return rid if rtype == USER_TOKENS[token] and rid else None
        return None
    value = getattr(context, token.removeprefix("context."), None)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None  # absent, or not a primitive value


@dataclass(frozen=True)
class FhirQuery:
    """A rendered template: a read (``resource_id`` set) or a type-level search (``params``)."""

    resource_type: str
    resource_id: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    @property
    def is_read(self) -> bool:
        return self.resource_id is not None

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)


def parse_relative_url(url: str) -> FhirQuery:
    """``Patient/123`` or ``Observation?patient=123``; `ValueError` for anything else."""
    path, _, query = url.partition("?")
    parts = path.split("/")
    if not _RESOURCE_TYPE.match(parts[0]) or len(parts) > 2:
        raise ValueError("a prefetch query must be [type]/[id] or [type]?[parameters]")
    if len(parts) == 2:
        if query or not _FHIR_ID.match(parts[1]):
            raise ValueError("a prefetch read must be [type]/[id] with a FHIR id")
        return FhirQuery(parts[0], parts[1])
    return FhirQuery(parts[0], params=tuple(parse_qsl(query, keep_blank_values=True)))
