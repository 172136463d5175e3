"""Who may call the REST API: an API key, or an OAuth2 bearer token from the configured issuer.

API keys are kept hashed: the keys file maps a caller's name to ``"sha256:<hex>"``
of its key (``crosscheck serve --hash-api-key`` prints one); a call sends the key
in ``X-API-Key``. OAuth2 bearer tokens are JWTs signed with an asymmetric key of
the issuer's JWKS (``oauth_jwks_url``), with ``iss`` and ``aud`` as configured and
``exp`` in the future. CDS Hooks calls authenticate differently (`plugin.cds.auth`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from plugin.errors import ApiAuthenticationError, UsageError
from plugin.store import Actor, ActorKind

__all__ = ["ApiAuth", "hash_api_key", "load_api_keys"]

_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384"]


def hash_api_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_api_keys(path: Path) -> dict[str, str]:
    """``{"<caller name>": "sha256:<hex>"}``; `UsageError` for a file that is not that."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise UsageError(f"API keys file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"API keys file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("sha256:") and len(v) == 71
        for k, v in data.items()
    ):
        raise UsageError(f'API keys file {path} must map names to "sha256:<64 hex digits>"')
    return dict(data)


@dataclass
class ApiAuth:
    """Checks REST calls. ``insecure`` lets every call through as ``anonymous``."""

    api_keys: Mapping[str, str] = field(default_factory=dict)
    oauth_issuer: str | None = None
    oauth_jwks_url: str | None = None
    oauth_audience: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        oauth = (self.oauth_issuer, self.oauth_jwks_url, self.oauth_audience)
        if any(oauth) and not all(oauth):
            raise UsageError("OAuth2 needs all of oauth_issuer, oauth_jwks_url and oauth_audience")
        self._jwks = jwt.PyJWKClient(self.oauth_jwks_url, cache_keys=True) if self.oauth_jwks_url else None

    @property
    def configured(self) -> bool:
        return bool(self.api_keys) or self._jwks is not None

    async def authenticate(self, api_key: str | None, authorization: str | None) -> Actor:
        if api_key:
            digest = hash_api_key(api_key)
            for name, expected in self.api_keys.items():
                if hmac.compare_digest(digest, expected):
                    return Actor(ActorKind.API_KEY, name)
            raise ApiAuthenticationError("the API key is not valid")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiAuthenticationError("the Authorization header must be 'Bearer <token>'")
            if self._jwks is None:
                raise ApiAuthenticationError("this service takes no OAuth2 bearer tokens; use an API key")
            return await asyncio.to_thread(self._verify, token.strip())
        if self.insecure:
            return Actor(ActorKind.ANONYMOUS)
        raise ApiAuthenticationError("authentication required: an X-API-Key header or a bearer token")

    def _verify(self, token: str) -> Actor:
        assert self._jwks is not None
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=_ALGORITHMS,
                audience=self.oauth_audience,
                issuer=self.oauth_issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.PyJWKClientConnectionError:
            raise ApiAuthenticationError("the OAuth2 issuer's keys could not be fetched") from None
        except jwt.PyJWTError as exc:
            raise ApiAuthenticationError(f"the bearer token is not valid ({type(exc).__name__})") from None
        return Actor(ActorKind.OAUTH, str(claims.get("sub") or claims.get("client_id") or "") or None)
