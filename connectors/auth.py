"""Credentials for FHIR servers and PACS: bearer token, HTTP basic, SMART Backend Services.

`Credentials` is what a user configures (options, ``CROSSCHECK_*`` environment
variables, or the ``fhirAuthorization`` a CDS client hands over); `httpx_auth`
turns it into an ``httpx.Auth`` and `requests_session` into a ``requests``
session (what dicomweb-client takes).

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html):
the client signs a short-lived JWT (RS384 or ES384) with its private key and
trades it at the token endpoint for an access token (client-credentials grant,
``client_assertion_type`` jwt-bearer). The token is cached until shortly before
it expires and fetched again on a 401. The token endpoint is either given or
discovered from ``<fhir base>/.well-known/smart-configuration``.

Secrets never appear in ``repr``, messages or logs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import requests

from connectors.errors import AuthenticationFailed
from connectors.http import outcome_issues, redact_url

__all__ = [
    "ASSERTION_TYPE",
    "SMART_ALGORITHMS",
    "BearerToken",
    "Credentials",
    "SmartBackendAuth",
    "SmartClient",
    "httpx_auth",
    "requests_session",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ALGORITHMS = ("RS384", "ES384")
_REFRESH_MARGIN_S = 30.0


@dataclass(frozen=True)
class SmartClient:
    """A SMART Backend Services client registration."""

    client_id: str
    private_key_pem: bytes = field(repr=False)
    algorithm: str = "RS384"
    key_id: str | None = None
    scope: str = "system/*.read"
    token_url: str | None = None
    jku: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in SMART_ALGORITHMS:
            raise ValueError(
                f"SMART algorithm must be one of {', '.join(SMART_ALGORITHMS)}, not {self.algorithm!r}"
            )

    @classmethod
    def from_key_file(cls, client_id: str, key_file: Path, **kwargs: Any) -> SmartClient:
        try:
            pem = key_file.read_bytes()
        except OSError as exc:
            raise ValueError(f"{key_file}: cannot read the SMART private key ({exc.strerror})") from None
        return cls(client_id=client_id, private_key_pem=pem, **kwargs)

    def assertion(self, token_url: str, *, now: float | None = None) -> str:
        """The signed client assertion JWT for ``token_url`` (valid five minutes)."""
        issued = int(time.time() if now is None else now)
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        if self.jku:
            headers["jku"] = self.jku
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": issued + 300,
            "iat": issued,
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(claims, self.private_key_pem, algorithm=self.algorithm, headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ValueError(
                f"SMART client {self.client_id}: the private key cannot sign {self.algorithm} "
                f"({exc.__class__.__name__}); RS384 needs an RSA key, ES384 a P-384 EC key, PEM encoded"
            ) from None


@dataclass(frozen=True)
class Credentials:
    """At most one of: a bearer token, a user and password, a SMART client."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    smart: SmartClient | None = None

    def __post_init__(self) -> None:
        kinds = sum(x is not None for x in (self.token, self.username, self.smart))
        if kinds > 1:
            raise ValueError(
                "give one of a bearer token, a user and password, or a SMART client; not several"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("HTTP basic authentication needs both a user and a password")

    @property
    def kind(self) -> str:
        if self.token is not None:
            return "bearer"
        if self.username is not None:
            return "basic"
        if self.smart is not None:
            return "smart-backend"
        return "none"


class BearerToken(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: fetch, cache and renew an access token; send it as a bearer token.

    ``fhir_base`` is where ``.well-known/smart-configuration`` is looked up when
    the client has no ``token_url``.
    """

    requires_response_body = True

    def __init__(self, client: SmartClient, fhir_base: str) -> None:
        self.client = client
        self.fhir_base = fhir_base.rstrip("/")
        self._token_url = client.token_url
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client.client_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token_url is None:
            discovery = yield httpx.Request(
                "GET",
                f"{self.fhir_base}/.well-known/smart-configuration",
                headers={"Accept": "application/json"},
            )
            self._token_url = self._discovered_token_url(discovery)
        token = self._valid_token()
        if token is None:
            token = yield from self._fetch_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, one retry
            token = yield from self._fetch_token()
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def _valid_token(self) -> str | None:
        with self._lock:
            if self._token and time.monotonic() < self._expires - _REFRESH_MARGIN_S:
                return self._token
        return None

    def _fetch_token(self) -> Generator[httpx.Request, httpx.Response, str]:
        assert self._token_url is not None
        form = {
            "grant_type": "client_credentials",
            "scope": self.client.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client.assertion(self._token_url),
        }
        response = yield httpx.Request(
            "POST", self._token_url, data=form, headers={"Accept": "application/json"}
        )
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            reason = ""
            if isinstance(body, dict):
                reason = str(body.get("error_description") or body.get("error") or "")
                reason = reason or "; ".join(outcome_issues(body))
            raise AuthenticationFailed(
                f"the SMART token endpoint {redact_url(self._token_url)} refused client "
                f"{self.client.client_id} (HTTP {response.status_code}{': ' + reason if reason else ''}); "
                "check the client id, the registered public key (JWKS) and the scope",
                url=redact_url(self._token_url),
                status=response.status_code,
            )
        lifetime = body.get("expires_in")
        with self._lock:
            self._token = token
            self._expires = time.monotonic() + (
                float(lifetime) if isinstance(lifetime, int | float) else 300.0
            )
        return token

    def _discovered_token_url(self, response: httpx.Response) -> str:
        body = _json(response)
        url = body.get("token_endpoint") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(url, str):
            raise AuthenticationFailed(
                f"{self.fhir_base}/.well-known/smart-configuration gave no token_endpoint "
                f"(HTTP {response.status_code}); pass the token URL explicitly",
                url=f"{self.fhir_base}/.well-known/smart-configuration",
                status=response.status_code,
            )
        return url


def httpx_auth(credentials: Credentials | None, *, fhir_base: str) -> httpx.Auth | None:
    """The ``httpx.Auth`` for ``credentials`` (None when there are none)."""
    if credentials is None or credentials.kind == "none":
        return None
    if credentials.token is not None:
        return BearerToken(credentials.token)
    if credentials.username is not None and credentials.password is not None:
        return httpx.BasicAuth(credentials.username, credentials.password)
    assert credentials.smart is not None
    return SmartBackendAuth(credentials.smart, fhir_base)


def requests_session(credentials: Credentials | None) -> requests.Session:
    """A ``requests`` session (what dicomweb-client takes) sending ``credentials``: basic or bearer.

    A SMART client is refused (ValueError): PACSes take a user and password or a token.
    """
    if credentials is not None and credentials.smart is not None:
        raise ValueError("DICOMweb takes HTTP basic or a bearer token, not a SMART client")
    session = requests.Session()
    if credentials is not None and credentials.username is not None and credentials.password is not None:
        session.auth = (credentials.username, credentials.password)
    if credentials is not None and credentials.token is not None:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
    return session


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
