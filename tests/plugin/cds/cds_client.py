"""A simulated CDS client, for tests: its keys, its JWK Set, its allow-list entry, and its JWTs.

It signs JWTs the way CDS Hooks 2.0.1 asks ("Trusting CDS Clients"), and lets a test
forge every way a JWT can be wrong::

    client = SimulatedCdsClient()                              # ES384; RS384 with algorithm="RS384"
    registry = CdsClientRegistry.from_json(client.allow_list())  # {iss: {"jwks": {...}}}
    token = client.token("https://cds.example.org/cds-services/x")
    client.token(aud, exp=now - 60)                            # expired
    client.token(aud, jti=OMIT)                                # without a claim
    client.token(aud, headers={"kid": OMIT})                   # without a header
    client.token(aud, key=other.private_key)                   # signed with the wrong key
    client.token(aud, algorithm="none")                        # unsigned
    client.token(aud, algorithm="HS256")                       # HMAC keyed with the public key's PEM

It is not a test module. Tests in this folder import it as ``cds_client``; tests
elsewhere (tests/integration) load it by path, the way tests/fusion loads
``_model_cases.py``::

    spec = importlib.util.spec_from_file_location("tests_plugin_cds_client", <path of this file>)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["OMIT", "PrivateKey", "SimulatedCdsClient", "new_key"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()
"""An override value that leaves the claim or header out of the JWT."""


def new_key(algorithm: str = "ES384") -> PrivateKey:
    """A fresh private key for ``algorithm``: P-384 for ES384, RSA 2048 bits for RS384."""
    if algorithm.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[algorithm]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return ".".join(_b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload))


class SimulatedCdsClient:
    """A CDS client with one signing key (``algorithm``) and the JWK Set that publishes it.

    ``jwks_url``, when given, is where the test serves `jwks`; the allow-list entry then
    points there (``inline=False``) and every JWT carries it as ``jku``.
    """

    def __init__(
        self,
        iss: str = "https://ehr.example.org",
        *,
        algorithm: str = "ES384",
        kid: str | None = None,
        jwks_url: str | None = None,
        tenant: str | None = None,
        sub: str | None = None,
    ) -> None:
        self.iss = iss
        self.algorithm = algorithm
        self.jwks_url = jwks_url
        self.tenant = tenant
        self.sub = sub
        self.kid = kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.private_key: PrivateKey = new_key(algorithm)
        self._published: dict[str, dict[str, Any]] = {self.kid: self._public_jwk(self.private_key, self.kid)}

    def __repr__(self) -> str:
        return f"SimulatedCdsClient(iss={self.iss!r}, algorithm={self.algorithm!r}, kid={self.kid!r})"

    # -- what the service is told ------------------------------------------------------------

    def _public_jwk(self, key: PrivateKey, kid: str, algorithm: str | None = None) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.get_default_algorithms()[algorithm or self.algorithm].to_jwk(key.public_key())
        )
        return {**jwk, "kid": kid, "alg": algorithm or self.algorithm, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        """The client's JWK Set: the public halves of every key it has published."""
        return {"keys": list(self._published.values())}

    def allow_list_entry(self, inline: bool = True) -> dict[str, Any]:
        """``{"jwks": <JWK Set>}``, or ``{"jwks_url": ...}`` with ``inline=False``."""
        if inline:
            return {"jwks": self.jwks()}
        if self.jwks_url is None:
            raise ValueError("this client has no jwks_url; create it with jwks_url=... or use inline=True")
        return {"jwks_url": self.jwks_url}

    def allow_list(self, inline: bool = True) -> dict[str, Any]:
        """The allow-list JSON that trusts this client alone: ``{iss: allow_list_entry(inline)}``."""
        return {self.iss: self.allow_list_entry(inline)}

    def public_pem(self) -> bytes:
        """The signing key's public half as PEM (what an HS256 forgery uses as its secret)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def rotate(self, algorithm: str | None = None, kid: str | None = None) -> str:
        """Sign from now on with a new key, published next to the old ones; its kid."""
        self.algorithm = algorithm or self.algorithm
        self.kid = kid or f"{self.algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.private_key = new_key(self.algorithm)
        self._published[self.kid] = self._public_jwk(self.private_key, self.kid)
        return self.kid

    # -- JWTs -----------------------------------------------------------------------------------

    def claims(self, audience: str | list[str], **overrides: Any) -> dict[str, Any]:
        """The payload of a fresh JWT for ``audience`` (60 s lifetime, new jti), with ``overrides``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": audience,
            "exp": now + 60,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        if self.tenant is not None:
            claims["tenant"] = self.tenant
        if self.sub is not None:
            claims["sub"] = self.sub
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def header(self, algorithm: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The JOSE header: alg, typ JWT, kid (and jku when the client has a jwks_url), with ``overrides``."""
        header: dict[str, Any] = {"alg": algorithm or self.algorithm, "typ": "JWT", "kid": self.kid}
        if self.jwks_url is not None:
            header["jku"] = self.jwks_url
        header.update(overrides)
        return {name: value for name, value in header.items() if value is not OMIT}

    def token(
        self,
        audience: str | list[str],
        *,
        algorithm: str | None = None,
        key: PrivateKey | bytes | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT for ``audience`` (the exact URL the service will be called at).

        ``claims`` and ``headers`` override or (with `OMIT`) remove the defaults.
        ``algorithm`` signs with another alg: ``"none"`` leaves it unsigned, ``HS*`` signs with
        HMAC keyed by ``key`` (bytes; default the public key's PEM, the classic confusion attack).
        ``key`` signs with another private key under the same kid.
        """
        algorithm = algorithm or self.algorithm
        header = self.header(algorithm, **(headers or {}))
        payload = self.claims(audience, **claims)
        if algorithm.lower() == "none":
            return _compact(header, payload) + "."
        if algorithm.startswith("HS"):
            secret = key if isinstance(key, bytes) else self.public_pem()
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
            signing_input = _compact(header, payload)
            return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), digest).digest())}"
        signer = key if key is not None and not isinstance(key, bytes) else self.private_key
        # PyJWT writes alg itself; the rest of the header goes as given (kid, typ, jku or their absence)
        extra = {name: value for name, value in header.items() if name != "alg"}
        if "typ" not in extra:
            extra["typ"] = None  # PyJWT adds typ JWT unless told not to
        return jwt.encode(payload, signer, algorithm=header.get("alg", algorithm), headers=extra)

    def authorization(self, audience: str | list[str], **options: Any) -> str:
        """The ``Authorization`` header value: ``Bearer <token(audience, **options)>``."""
        return f"Bearer {self.token(audience, **options)}"
