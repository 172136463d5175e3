"""Trusting CDS Clients (CDS Hooks 2.0.1): the allow-list, the clients' keys, and the JWT check.

Every call a CDS client makes (discovery, a service, feedback) carries
``Authorization: Bearer <JWT>``, signed with the client's private key; its public key is in
a JWK Set, found by the JWT header's ``kid``. This module decides whether such a call can
be trusted. It knows nothing of HTTP serving: the app hands `CdsTokenVerifier.verify` the
``Authorization`` header and the exact URL that was called, and maps the
`CdsAuthenticationError` it may raise to 401.

What is checked (the specification's "Trusting CDS Clients" and "JWT Signing Algorithm"):

- ``alg`` is ES384 or RS384 (never ``none``, never HMAC) and matches the type of the key;
- ``kid`` is present and names a key in the JWK Set of the issuer;
- ``jku``, when present, is the issuer's allow-listed ``jwks_url``; it is never fetched
  because a token names it;
- ``iss`` is on the allow-list (`CdsClientRegistry`);
- ``aud`` is the URL of the CDS Service endpoint being invoked (a string, or an array
  that contains it);
- ``exp`` and ``iat`` are present and current, within ``leeway``; ``exp - iat`` is at most
  ``max_lifetime`` (+ ``leeway``). The specification leaves that bound to the service; five
  minutes, the default, is SMART Backend Services' bound on a client's authentication JWT;
- ``jti`` is present and has not been seen from that issuer before (`ReplayCache`).

The allow-list is JSON, ``{"<iss>": {"jwks_url": "https://..."}}`` or
``{"<iss>": {"jwks": {<a JWK Set>}}}``. An inline JWK Set is parsed once; a ``jwks_url`` is
fetched with httpx when first needed, kept for `JwksPolicy.ttl`, and fetched again early
only when a token names a ``kid`` it lacks, at most once per `JwksPolicy.refetch_interval`
(so forged ``kid`` values cannot make us hammer the client's server).
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt

from connectors.errors import ServerError
from connectors.http import RetryPolicy, redact_url, send
from plugin.errors import CdsAuthenticationError, CdsAuthReason, CdsClientsConfigError, CdsJwksUnavailable

__all__ = [
    "CDS_ALGORITHMS",
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_LIFETIME",
    "CdsClaims",
    "CdsClientRegistry",
    "CdsTokenVerifier",
    "JwksPolicy",
    "MemoryReplayCache",
    "ReplayCache",
    "TrustedCdsClient",
    "parse_jwks",
]

logger = logging.getLogger(__name__)

CDS_ALGORITHMS = ("ES384", "RS384")
"""The signing algorithms accepted: the two the specification recommends, both asymmetric."""
DEFAULT_LEEWAY = timedelta(seconds=30)
DEFAULT_MAX_LIFETIME = timedelta(minutes=5)

_MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ENTRY_FIELDS = frozenset({"jwks", "jwks_url"})
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


# -- JWK Sets -------------------------------------------------------------------------------------


def _key_algorithm(jwk: Mapping[str, Any]) -> str:
    """The one algorithm a JWK may verify, or ValueError saying why it cannot be used."""
    kty, crv, alg, use = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"its use is {use!r}, not 'sig'")
    if kty == "EC" and crv == "P-384":
        algorithm = "ES384"
    elif kty == "RSA":
        algorithm = "RS384"
    else:
        raise ValueError(f"kty {kty!r}{f' on curve {crv!r}' if crv else ''} is neither P-384 EC nor RSA")
    if alg is not None and alg != algorithm:
        raise ValueError(f"its alg is {alg!r}; only {' or '.join(CDS_ALGORITHMS)} are accepted")
    return algorithm


def parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWK Set (RFC 7517), by ``kid``, each bound to its one algorithm.

    A key is usable when it has a ``kid``, is meant for signatures, and is a P-384 EC key
    (ES384) or an RSA key of at least 2048 bits (RS384). Other keys (encryption keys,
    other curves or algorithms) are skipped. ValueError when the JWK Set is not one,
    holds private key material, repeats a ``kid``, or has no usable key (the message lists
    why each key was skipped).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError('it is not a JWK Set (a JSON object with a "keys" array)')
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, Mapping):
            raise ValueError(f"key #{index} is not a JSON object")
        kid = jwk.get("kid")
        name = f"key {kid!r}" if isinstance(kid, str) else f"key #{index}"
        if _PRIVATE_MEMBERS & jwk.keys():
            raise ValueError(f"{name} holds private key material; give the public JWK Set only")
        if not isinstance(kid, str) or not kid:
            skipped.append(f"{name} has no kid")
            continue
        try:
            algorithm = _key_algorithm(jwk)
            key = jwt.PyJWK(dict(jwk), algorithm=algorithm)
        except (ValueError, jwt.PyJWTError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if key.Algorithm.check_key_length(key.key) is not None:
            skipped.append(f"{name}: an RSA key shorter than {_MIN_RSA_BITS} bits")
            continue
        if kid in keys:
            raise ValueError(f"kid {kid!r} names two keys; each kid must be unique within the JWK Set")
        keys[kid] = key
    if not keys:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise ValueError(f"it has no usable signing key (ES384 on P-384, or RS384, with a kid){why}")
    return keys


# -- the allow-list -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedCdsClient:
    """One allow-listed CDS client: its ``iss``, and either its ``jwks_url`` or its inline keys."""

    iss: str
    jwks_url: str | None = None
    keys: Mapping[str, jwt.PyJWK] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.keys is None):
            raise ValueError("a TrustedCdsClient has either a jwks_url or inline keys, not both or neither")


def _check_jwks_url(url: Any) -> str:
    if not isinstance(url, str):
        raise ValueError("jwks_url is not a string")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and _is_loopback(host):
        return url  # a test's JWKS on this machine
    raise ValueError(
        f"jwks_url {redact_url(url) if host else url!r} is not an https URL "
        "(plain http is accepted only on the loopback interface, for tests)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


class CdsClientRegistry:
    """The allow-list of CDS clients, by ``iss``: which clients may call, and where their keys are.

    Build it with `load` (a JSON file) or `from_json`; both raise `CdsClientsConfigError`
    naming the file or entry that is wrong and what to write instead.
    """

    def __init__(self, clients: list[TrustedCdsClient]) -> None:
        self._clients = {client.iss: client for client in clients}

    def __repr__(self) -> str:
        return f"CdsClientRegistry({sorted(self._clients)!r})"

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[TrustedCdsClient]:
        return iter(self._clients.values())

    def __contains__(self, iss: object) -> bool:
        return iss in self._clients

    def get(self, iss: str) -> TrustedCdsClient | None:
        """The allow-listed client whose ``iss`` this is, or None."""
        return self._clients.get(iss)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CdsClientRegistry:
        """The allow-list in the JSON file at ``path``."""
        where = f"the CDS clients file {os.fspath(path)}"
        try:
            text = Path(path).read_text("utf-8")
        except FileNotFoundError:
            raise CdsClientsConfigError(
                f"{where} does not exist; give the path of the allow-list of CDS clients "
                "(--cds-clients or CROSSCHECK_CDS_CLIENTS)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CdsClientsConfigError(f"{where} cannot be read: {exc}") from exc
        return cls.from_json(text, source=where)

    @classmethod
    def from_json(
        cls, data: str | bytes | Mapping[str, Any], *, source: str = "the CDS clients allow-list"
    ) -> CdsClientRegistry:
        """The allow-list from its JSON text, or from the object that text parses to.

        ``source`` names it in error messages.
        """
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise CdsClientsConfigError(
                    f"{source} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                ) from exc
            except ValueError as exc:
                raise CdsClientsConfigError(f"{source} is ambiguous: {exc}") from exc
        if not isinstance(data, Mapping):
            raise CdsClientsConfigError(
                f'{source} is not a JSON object; write {{"<iss>": {{"jwks_url": "https://..."}}}} '
                'or {"<iss>": {"jwks": {<a JWK Set>}}}'
            )
        if not data:
            raise CdsClientsConfigError(f"{source} lists no CDS client; no call could be trusted")
        return cls([_client(iss, entry, source) for iss, entry in data.items()])


def _client(iss: Any, entry: Any, source: str) -> TrustedCdsClient:
    if not isinstance(iss, str) or not iss:
        raise CdsClientsConfigError(f"{source} has an empty issuer; each key is a client's iss")
    where = f"{source}, issuer {iss!r}"
    if not isinstance(entry, Mapping):
        raise CdsClientsConfigError(f'{where}: the entry is not an object like {{"jwks_url": "https://..."}}')
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise CdsClientsConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; an entry has jwks_url or jwks"
        )
    if ("jwks" in entry) == ("jwks_url" in entry):
        raise CdsClientsConfigError(
            f"{where}: give exactly one of jwks_url (where the client publishes its JWK Set) "
            "or jwks (the JWK Set itself)"
        )
    if "jwks_url" in entry:
        try:
            return TrustedCdsClient(iss, jwks_url=_check_jwks_url(entry["jwks_url"]))
        except ValueError as exc:
            raise CdsClientsConfigError(f"{where}: {exc}") from None
    try:
        keys = parse_jwks(entry["jwks"])
    except ValueError as exc:
        raise CdsClientsConfigError(f"{where}: the inline jwks cannot be used: {exc}") from None
    return TrustedCdsClient(iss, keys=MappingProxyType(keys))


# -- fetched JWK Sets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JwksPolicy:
    """How a ``jwks_url`` is fetched and kept.

    ``ttl``: seconds a fetched JWK Set is used before it is fetched again.
    ``refetch_interval``: the least number of seconds between two fetches of one URL, whether
    the last one failed or a token named a ``kid`` the set lacked.
    ``timeout``: seconds to connect and to read; ``max_bytes``: the largest JWK Set read.
    """

    ttl: float = 3600.0
    refetch_interval: float = 30.0
    timeout: float = 5.0
    max_bytes: int = 1 << 20


class _RemoteJwks:
    """The JWK Set of one ``jwks_url``: fetched when needed, kept, refreshed within the policy."""

    def __init__(self, url: str, policy: JwksPolicy, clock: Callable[[], float]) -> None:
        self.url = url
        self.policy = policy
        self.clock = clock
        self.keys: dict[str, jwt.PyJWK] | None = None
        self.fetched_at = -math.inf
        self.attempted_at = -math.inf
        self.failure = ""
        self.lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self.keys is not None and self.clock() - self.fetched_at < self.policy.ttl

    async def key(self, kid: str, http: httpx.AsyncClient | None) -> jwt.PyJWK | None:
        """The key named ``kid``, or None when the (refreshed) set lacks it; CdsJwksUnavailable."""
        if self._fresh() and self.keys is not None and kid in self.keys:
            return self.keys[kid]
        async with self.lock:  # one fetch at a time; the waiters then use its result
            may_fetch = self.clock() - self.attempted_at >= self.policy.refetch_interval
            if may_fetch and (not self._fresh() or kid not in (self.keys or {})):
                await self._refresh(http)
            if self.keys is None:
                raise CdsJwksUnavailable(self.failure)
            return self.keys.get(kid)

    async def _refresh(self, http: httpx.AsyncClient | None) -> None:
        self.attempted_at = self.clock()
        try:
            if http is not None:
                keys = await self._fetch(http)
            else:
                async with httpx.AsyncClient() as own:
                    keys = await self._fetch(own)
        except CdsJwksUnavailable as exc:
            self.failure = str(exc)
            stale = " (using the JWK Set fetched before)" if self.keys is not None else ""
            logger.warning("%s%s", exc, stale)
            return
        self.keys, self.fetched_at, self.failure = keys, self.attempted_at, ""
        logger.debug("fetched the JWK Set at %s: %d usable keys", redact_url(self.url), len(keys))

    async def _fetch(self, http: httpx.AsyncClient) -> dict[str, jwt.PyJWK]:
        what = f"the CDS client's JWK Set at {redact_url(self.url)}"
        request = http.build_request(
            "GET",
            self.url,
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(self.policy.timeout),
        )
        try:
            response = await send(
                http, request, policy=RetryPolicy(attempts=1), what="the CDS client's JWK Set", stream=True
            )
        except ServerError as exc:  # the message names the URL
            raise CdsJwksUnavailable(f"{exc}; its tokens cannot be verified until it answers") from None
        try:
            if response.status_code != 200:  # send() follows no redirect; a 3xx arrives here
                raise CdsJwksUnavailable(f"{what} answered HTTP {response.status_code}, not a JWK Set")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.policy.max_bytes:
                    raise CdsJwksUnavailable(f"{what} is larger than {self.policy.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise CdsJwksUnavailable(f"{what} could not be read ({exc.__class__.__name__})") from None
        finally:
            await response.aclose()
        try:
            return parse_jwks(json.loads(body))
        except ValueError as exc:  # JSONDecodeError too
            raise CdsJwksUnavailable(f"{what} cannot be used: {exc}") from None


# -- replay -------------------------------------------------------------------------------------


class ReplayCache(Protocol):
    """Remembers the ``jti`` of each accepted JWT until it expires, so no JWT is accepted twice."""

    async def use(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record ``(iss, jti)`` until ``expires_at``; False when it is already recorded (a replay).

        Must be atomic: of two concurrent calls with the same pair, exactly one gets True.
        """
        ...


class MemoryReplayCache:
    """A `ReplayCache` in this process's memory (one worker; a restart forgets).

    Safe across threads and tasks. Expired entries are dropped as new ones arrive. ``now``
    is the clock, a timezone-aware datetime (tests pass their own).
    """

    def __init__(self, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self._expiry: dict[tuple[str, str], datetime] = {}
        self._heap: list[tuple[datetime, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(self._now())
            return len(self._expiry)

    async def use(self, iss: str, jti: str, expires_at: datetime) -> bool:
        key = (iss, jti)
        with self._lock:
            self._drop_expired(self._now())
            if key in self._expiry:
                return False
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def _drop_expired(self, now: datetime) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            del self._expiry[key]


# -- the verifier -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CdsClaims:
    """What a trusted CDS client's JWT says: who (``iss``, ``sub``, ``tenant``), which token, when."""

    iss: str
    sub: str | None
    jti: str
    exp: datetime
    iat: datetime
    tenant: str | None
    kid: str


def _refuse(reason: CdsAuthReason, message: str) -> CdsAuthenticationError:
    return CdsAuthenticationError(message, reason=reason)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise _refuse(
            "missing-token", "the call has no Authorization header; send 'Authorization: Bearer <JWT>'"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refuse(
            "missing-token",
            "the Authorization header is not a bearer token; send 'Authorization: Bearer <JWT>'",
        )
    return token


def _when(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


class CdsTokenVerifier:
    """Decides whether a CDS client's call can be trusted; see the module's docstring for the checks.

    ``http`` is the client used to fetch ``jwks_url`` JWK Sets (its transport can be an
    ``httpx.MockTransport`` in tests); without it each fetch opens its own. ``clock`` is the
    monotonic clock of the JWK Set cache.
    """

    def __init__(
        self,
        registry: CdsClientRegistry,
        replay_cache: ReplayCache,
        *,
        leeway: timedelta = DEFAULT_LEEWAY,
        max_lifetime: timedelta = DEFAULT_MAX_LIFETIME,
        http: httpx.AsyncClient | None = None,
        jwks_policy: JwksPolicy = JwksPolicy(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.replay_cache = replay_cache
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._http = http
        self._remote = {
            c.jwks_url: _RemoteJwks(c.jwks_url, jwks_policy, clock)
            for c in registry
            if c.jwks_url is not None
        }

    async def verify(self, authorization: str | None, audience: str) -> CdsClaims:
        """The claims of the call's JWT, once all checks pass; else `CdsAuthenticationError`.

        ``authorization`` is the ``Authorization`` header as received; ``audience`` is the
        exact URL the client called (e.g. ``https://cds.example.org/cds-services/some-service``).
        """
        token = _bearer(authorization)
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refuse("malformed", "the bearer token is not a JWT (JWS compact serialization)") from None
        header, payload = unverified["header"], unverified["payload"]

        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _refuse("unsigned", "the JWT is unsigned (alg none); the CDS client must sign it")
        if alg not in CDS_ALGORITHMS:
            raise _refuse(
                "disallowed-algorithm",
                f"the JWT's signing algorithm is not accepted; use {' or '.join(CDS_ALGORITHMS)}",
            )
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise _refuse("malformed", "the JWT header's typ is not 'JWT'")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refuse("missing-kid", "the JWT header has no kid naming the key that signed it")

        iss = payload.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _refuse("missing-claim", "the JWT has no iss claim")
        client = self.registry.get(iss)
        if client is None:
            raise _refuse("unknown-issuer", "the JWT's issuer is not on the allow-list of CDS clients")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise _refuse(
                "wrong-jku",
                f"the JWT's jku is not the JWK Set URL allow-listed for {client.iss}; "
                "the allow-list entry must give that URL as jwks_url",
            )
        key = await self._key(client, kid)
        if alg != key.algorithm_name:
            raise _refuse(
                "disallowed-algorithm", f"the JWT's alg does not match its key's type ({key.algorithm_name})"
            )

        claims = self._decode(token, key, audience, iss)
        try:
            exp, iat = _when(claims["exp"]), _when(claims["iat"])
        except (OverflowError, OSError, ValueError):
            raise _refuse("malformed", "the JWT's exp or iat is not a usable time") from None
        if exp - iat > self.max_lifetime + self.leeway:
            raise _refuse(
                "lifetime-too-long",
                f"the JWT is valid for {(exp - iat).total_seconds():.0f} s; at most "
                f"{self.max_lifetime.total_seconds():.0f} s is accepted",
            )
        sub, tenant = claims.get("sub"), claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise _refuse("malformed", "the JWT's tenant claim is not a string")
        jti = claims["jti"]
        if not jti:
            raise _refuse("missing-claim", "the JWT's jti claim is empty")
        if not await self.replay_cache.use(iss, jti, exp + self.leeway):
            raise _refuse("replayed", f"a JWT from {iss} with this jti was already used; send a new JWT")
        return CdsClaims(iss=iss, sub=sub, jti=jti, exp=exp, iat=iat, tenant=tenant, kid=kid)

    async def _key(self, client: TrustedCdsClient, kid: str) -> jwt.PyJWK:
        if client.keys is not None:
            key = client.keys.get(kid)
        else:
            assert client.jwks_url is not None
            key = await self._remote[client.jwks_url].key(kid, self._http)
        if key is None:
            raise _refuse("unknown-kid", f"the JWT's kid is not in the JWK Set of {client.iss}")
        return key

    def _decode(self, token: str, key: jwt.PyJWK, audience: str, iss: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=audience,
                issuer=iss,
                leeway=self.leeway,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidSignatureError:
            raise _refuse("bad-signature", f"the JWT's signature does not verify with {iss}'s key") from None
        except jwt.ExpiredSignatureError:
            raise _refuse("expired", "the JWT has expired (exp); send a new JWT") from None
        except jwt.ImmatureSignatureError:
            raise _refuse(
                "not-yet-valid", "the JWT is issued in the future (iat or nbf); check the clocks"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            reason: CdsAuthReason = "wrong-audience" if exc.claim == "aud" else "missing-claim"
            raise _refuse(reason, f"the JWT has no {exc.claim} claim") from None
        except jwt.InvalidAudienceError:
            raise _refuse(
                "wrong-audience", "the JWT's aud is not the URL of the CDS Service called"
            ) from None
        except jwt.PyJWTError as exc:
            raise _refuse("malformed", f"the JWT's claims are malformed ({exc.__class__.__name__})") from None
