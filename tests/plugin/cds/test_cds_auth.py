"""`plugin.cds.auth`: the allow-list of CDS clients, their JWK Sets, and the JWT every call carries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cds_client import OMIT, SimulatedCdsClient, new_key

from plugin.cds.auth import (
    DEFAULT_LEEWAY,
    CdsClaims,
    CdsClientRegistry,
    CdsTokenVerifier,
    JwksPolicy,
    MemoryReplayCache,
    parse_jwks,
)
from plugin.errors import CdsAuthenticationError, CdsClientsConfigError, CdsJwksUnavailable, PluginError

AUD = "https://cds.example.org/cds-services/crosscheck-patient-view"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
POLICY = JwksPolicy(ttl=600, refetch_interval=30)


@pytest.fixture(scope="module")
def es() -> SimulatedCdsClient:
    return SimulatedCdsClient("https://ehr.example.org", algorithm="ES384", tenant="hospital-1", sub="ehr")


@pytest.fixture(scope="module")
def rs() -> SimulatedCdsClient:
    return SimulatedCdsClient("https://pacs-viewer.example.net", algorithm="RS384")


@pytest.fixture(scope="module")
def registry(es: SimulatedCdsClient, rs: SimulatedCdsClient) -> CdsClientRegistry:
    return CdsClientRegistry.from_json({**es.allow_list(), **rs.allow_list()})


@pytest.fixture
def verifier(registry: CdsClientRegistry) -> CdsTokenVerifier:
    return CdsTokenVerifier(registry, MemoryReplayCache())


def verify(verifier: CdsTokenVerifier, authorization: str | None, audience: str = AUD) -> CdsClaims:
    return asyncio.run(verifier.verify(authorization, audience))


def refusal(
    verifier: CdsTokenVerifier, authorization: str | None, audience: str = AUD
) -> CdsAuthenticationError:
    with pytest.raises(CdsAuthenticationError) as caught:
        verify(verifier, authorization, audience)
    return caught.value


# -- the allow-list -------------------------------------------------------------------------------


def test_load_reads_inline_and_url_entries(tmp_path: Path, es: SimulatedCdsClient) -> None:
    path = tmp_path / "cds-clients.json"
    path.write_text(json.dumps({**es.allow_list(), "https://other.example.org": {"jwks_url": JWKS_URL}}))
    registry = CdsClientRegistry.load(path)
    assert len(registry) == 2 and es.iss in registry and "https://nobody.example.org" not in registry
    inline = registry.get(es.iss)
    assert inline is not None and inline.jwks_url is None
    assert inline.keys is not None and list(inline.keys) == [es.kid]
    assert inline.keys[es.kid].algorithm_name == "ES384"
    remote = registry.get("https://other.example.org")
    assert remote is not None and remote.jwks_url == JWKS_URL and remote.keys is None
    assert {c.iss for c in registry} == {es.iss, "https://other.example.org"}


def test_from_json_takes_text_too(es: SimulatedCdsClient) -> None:
    assert es.iss in CdsClientRegistry.from_json(json.dumps(es.allow_list()))
    assert es.iss in CdsClientRegistry.from_json(json.dumps(es.allow_list()).encode())


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CdsClientsConfigError, match=r"nowhere\.json does not exist"):
        CdsClientRegistry.load(tmp_path / "nowhere.json")


def test_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text('{"https://ehr.example.org": {"jwks_url": ')
    with pytest.raises(CdsClientsConfigError, match=r"clients\.json is not JSON .*line 1"):
        CdsClientRegistry.load(path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "is not a JSON object"),
        ({}, "lists no CDS client"),
        ({"": {"jwks_url": JWKS_URL}}, "empty issuer"),
        ({"https://ehr.example.org": JWKS_URL}, "not an object"),
        ({"https://ehr.example.org": {}}, "exactly one of jwks_url"),
        (
            {"https://ehr.example.org": {"jwks_url": JWKS_URL, "jwks": {"keys": []}}},
            "exactly one of jwks_url",
        ),
        ({"https://ehr.example.org": {"jwks_uri": JWKS_URL}}, "unknown field.*jwks_uri"),
        ({"https://ehr.example.org": {"jwks_url": "http://ehr.example.org/jwks"}}, "not an https URL"),
        ({"https://ehr.example.org": {"jwks_url": "ftp://127.0.0.1/jwks"}}, "not an https URL"),
        ({"https://ehr.example.org": {"jwks_url": "https:///jwks"}}, "not an https URL"),
        ({"https://ehr.example.org": {"jwks_url": 42}}, "not a string"),
        ({"https://ehr.example.org": {"jwks": []}}, "not a JWK Set"),
        ({"https://ehr.example.org": {"jwks": {"keys": "k"}}}, "not a JWK Set"),
        ({"https://ehr.example.org": {"jwks": {"keys": []}}}, "no usable signing key"),
        ({"https://ehr.example.org": {"jwks": {"keys": ["k"]}}}, "not a JSON object"),
    ],
)
def test_unusable_allow_list(data: Any, match: str) -> None:
    with pytest.raises(CdsClientsConfigError, match=match):
        CdsClientRegistry.from_json(data)


def test_issuer_given_twice_is_refused() -> None:
    entry = json.dumps({"jwks_url": JWKS_URL})
    text = f'{{"https://a.example.org": {entry}, "https://a.example.org": {entry}}}'
    with pytest.raises(CdsClientsConfigError, match="appears twice"):
        CdsClientRegistry.from_json(text)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765/jwks", "http://localhost/jwks", "http://[::1]:9000/jwks", JWKS_URL]
)
def test_jwks_url_https_or_loopback_http(url: str) -> None:
    client = CdsClientRegistry.from_json({"https://ehr.example.org": {"jwks_url": url}}).get(
        "https://ehr.example.org"
    )
    assert client is not None and client.jwks_url == url


def test_config_errors_are_plugin_errors() -> None:
    assert issubclass(CdsClientsConfigError, PluginError)
    assert issubclass(CdsJwksUnavailable, CdsAuthenticationError)
    assert issubclass(CdsAuthenticationError, PluginError)


# -- JWK Sets -------------------------------------------------------------------------------------


def _jwk(client: SimulatedCdsClient, **changes: Any) -> dict[str, Any]:
    jwk = {**client.jwks()["keys"][0], **changes}
    return {name: value for name, value in jwk.items() if value is not OMIT}


def test_parse_jwks_keeps_only_usable_signing_keys(es: SimulatedCdsClient, rs: SimulatedCdsClient) -> None:
    p256 = SimulatedCdsClient(algorithm="ES256")
    keys = parse_jwks(
        {
            "keys": [
                _jwk(es),
                _jwk(rs, alg=OMIT),  # an RSA key without alg: RS384
                _jwk(es, kid="for-encryption", use="enc"),
                _jwk(es, kid=OMIT),
                _jwk(rs, kid="rs256", alg="RS256"),
                _jwk(p256),
                {"kty": "oct", "kid": "shared", "alg": "HS256"},
            ]
        }
    )
    assert sorted(keys) == sorted([es.kid, rs.kid])
    assert keys[rs.kid].algorithm_name == "RS384"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"d": "c2VjcmV0"}, "private key material"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "private key material"),
        ({"alg": "ES256"}, "no usable signing key .*'ES256'"),
        ({"kty": "OKP", "crv": "Ed25519"}, "no usable signing key"),
    ],
)
def test_parse_jwks_refuses(es: SimulatedCdsClient, change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_jwks({"keys": [_jwk(es, **change)]})


def test_parse_jwks_refuses_a_repeated_kid(es: SimulatedCdsClient, rs: SimulatedCdsClient) -> None:
    with pytest.raises(ValueError, match="names two keys"):
        parse_jwks({"keys": [_jwk(es), _jwk(rs, kid=es.kid)]})


def test_parse_jwks_refuses_short_rsa_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(short.public_key())), "kid": "short"}
    with pytest.raises(ValueError, match="shorter than 2048 bits"):
        parse_jwks({"keys": [jwk]})


def test_inline_jwks_errors_name_the_issuer(es: SimulatedCdsClient) -> None:
    with pytest.raises(
        CdsClientsConfigError, match=r"issuer 'https://ehr\.example\.org'.*private key material"
    ):
        CdsClientRegistry.from_json({es.iss: {"jwks": {"keys": [_jwk(es, d="c2VjcmV0")]}}})


# -- accepted JWTs -------------------------------------------------------------------------------


def test_es384_token_is_accepted(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    token = es.token(AUD, jti="jti-1")
    claims = verify(verifier, f"Bearer {token}")
    assert (claims.iss, claims.sub, claims.jti, claims.tenant, claims.kid) == (
        es.iss,
        "ehr",
        "jti-1",
        "hospital-1",
        es.kid,
    )
    assert claims.exp - claims.iat == timedelta(seconds=60)
    assert claims.exp.tzinfo is not None and abs(claims.iat - datetime.now(UTC)) < timedelta(minutes=1)


def test_rs384_token_is_accepted(verifier: CdsTokenVerifier, rs: SimulatedCdsClient) -> None:
    claims = verify(verifier, rs.authorization(AUD))
    assert (claims.iss, claims.kid, claims.sub, claims.tenant) == (rs.iss, rs.kid, None, None)


def test_audience_may_be_a_list_that_contains_the_url(
    verifier: CdsTokenVerifier, es: SimulatedCdsClient
) -> None:
    assert verify(verifier, es.authorization(["https://other.example.org", AUD])).iss == es.iss


def test_scheme_is_case_insensitive(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert verify(verifier, f"bearer  {es.token(AUD)} ").iss == es.iss


def test_times_within_leeway_are_accepted(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    now = int(time.time())
    assert verify(verifier, es.authorization(AUD, iat=now - 80, exp=now - 10))
    assert verify(verifier, es.authorization(AUD, iat=now + 10, exp=now + 70))
    assert verify(verifier, es.authorization(AUD, iat=now, exp=now + 300))


def test_token_without_typ_is_accepted(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert verify(verifier, es.authorization(AUD, headers={"typ": OMIT})).iss == es.iss


# -- refused JWTs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "", "   ", "Bearer", "Bearer  ", "Basic dXNlcjpwYXNz", "Token abc"]
)
def test_missing_token(verifier: CdsTokenVerifier, authorization: str | None) -> None:
    assert refusal(verifier, authorization).reason == "missing-token"


@pytest.mark.parametrize("token", ["abc", "a.b.c", "eyJhbGciOiJFUzM4NCJ9.e30", "...."])
def test_not_a_jwt(verifier: CdsTokenVerifier, token: str) -> None:
    assert refusal(verifier, f"Bearer {token}").reason == "malformed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned(verifier: CdsTokenVerifier, es: SimulatedCdsClient, alg: str) -> None:
    assert (
        refusal(verifier, es.authorization(AUD, algorithm="none", headers={"alg": alg})).reason == "unsigned"
    )


def test_hmac_keyed_with_the_public_key(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    error = refusal(verifier, es.authorization(AUD, algorithm="HS256"))
    assert error.reason == "disallowed-algorithm"
    assert "ES384 or RS384" in str(error)
    assert refusal(verifier, es.authorization(AUD, algorithm="HS384")).reason == "disallowed-algorithm"


def test_other_asymmetric_algorithms(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    for algorithm in ("ES256", "RS256", "PS384"):
        key = new_key("ES256") if algorithm == "ES256" else new_key("RS384")
        assert (
            refusal(verifier, es.authorization(AUD, algorithm=algorithm, key=key)).reason
            == "disallowed-algorithm"
        )


def test_alg_that_does_not_match_the_key_type(
    verifier: CdsTokenVerifier, es: SimulatedCdsClient, rs: SimulatedCdsClient
) -> None:
    """RS384 under the kid of an EC key (and the reverse): refused before any signature is checked."""
    error = refusal(verifier, es.authorization(AUD, algorithm="RS384", key=rs.private_key))
    assert (error.reason, "ES384" in str(error)) == ("disallowed-algorithm", True)
    assert refusal(verifier, rs.authorization(AUD, algorithm="ES384", key=es.private_key)).reason == (
        "disallowed-algorithm"
    )


def test_missing_kid(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, headers={"kid": OMIT})).reason == "missing-kid"
    assert refusal(verifier, es.authorization(AUD, headers={"kid": ""})).reason == "missing-kid"


def test_unknown_kid(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, headers={"kid": "not-a-key"})).reason == "unknown-kid"


def test_kid_of_another_client(
    verifier: CdsTokenVerifier, es: SimulatedCdsClient, rs: SimulatedCdsClient
) -> None:
    """A kid is looked up in the JWK Set of the token's own issuer only."""
    assert (
        refusal(verifier, rs.authorization(AUD, iss=es.iss, headers={"kid": rs.kid})).reason == "unknown-kid"
    )


def test_unknown_issuer(verifier: CdsTokenVerifier) -> None:
    stranger = SimulatedCdsClient("https://stranger.example.com")
    error = refusal(verifier, stranger.authorization(AUD))
    assert error.reason == "unknown-issuer"
    assert "stranger" not in str(error)


def test_missing_issuer(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, iss=OMIT)).reason == "missing-claim"


def test_signed_with_the_wrong_key(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    impostor = new_key("ES384")
    assert refusal(verifier, es.authorization(AUD, key=impostor)).reason == "bad-signature"


def test_altered_payload(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    header, _, signature = es.token(AUD).split(".")
    _, payload, _ = es.token("https://cds.example.org/cds-services/other").split(".")
    # the signature of one token over the payload of another, for the other audience
    forged = f"{header}.{payload}.{signature}"
    assert refusal(verifier, f"Bearer {forged}", "https://cds.example.org/cds-services/other").reason == (
        "bad-signature"
    )


def test_expired(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    now = int(time.time())
    error = refusal(verifier, es.authorization(AUD, iat=now - 200, exp=now - 100))
    assert error.reason == "expired"


def test_issued_in_the_future(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    now = int(time.time())
    assert refusal(verifier, es.authorization(AUD, iat=now + 120, exp=now + 180)).reason == "not-yet-valid"
    assert refusal(verifier, es.authorization(AUD, nbf=now + 120)).reason == "not-yet-valid"


def test_lifetime_longer_than_five_minutes(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    now = int(time.time())
    limit = 300 + int(DEFAULT_LEEWAY.total_seconds())
    assert verify(verifier, es.authorization(AUD, iat=now, exp=now + limit))
    error = refusal(verifier, es.authorization(AUD, iat=now, exp=now + limit + 1))
    assert error.reason == "lifetime-too-long"
    assert refusal(verifier, es.authorization(AUD, iat=now, exp=now + 86400)).reason == "lifetime-too-long"


def test_max_lifetime_is_a_setting(registry: CdsClientRegistry, es: SimulatedCdsClient) -> None:
    strict = CdsTokenVerifier(
        registry, MemoryReplayCache(), leeway=timedelta(0), max_lifetime=timedelta(seconds=30)
    )
    assert refusal(strict, es.authorization(AUD)).reason == "lifetime-too-long"  # 60 s
    assert verify(strict, es.authorization(AUD, exp=int(time.time()) + 30)).iss == es.iss


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services",
        AUD + "/",
        AUD.upper(),
        "https://cds.example.org/cds-services/other",
        ["https://cds.example.org/cds-services/other"],
        [],
        "",
    ],
)
def test_wrong_audience(verifier: CdsTokenVerifier, es: SimulatedCdsClient, aud: Any) -> None:
    assert refusal(verifier, es.authorization(aud)).reason == "wrong-audience"


def test_missing_audience(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, aud=OMIT)).reason == "wrong-audience"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti"])
def test_missing_claim(verifier: CdsTokenVerifier, es: SimulatedCdsClient, claim: str) -> None:
    error = refusal(verifier, es.authorization(AUD, **{claim: OMIT}))
    assert (error.reason, claim in str(error)) == ("missing-claim", True)


def test_empty_jti(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, jti="")).reason == "missing-claim"


@pytest.mark.parametrize(
    "claims",
    [{"jti": 42}, {"exp": "soon"}, {"iat": "now"}, {"tenant": 7}, {"sub": 7}, {"exp": 1e300}],
)
def test_malformed_claims(verifier: CdsTokenVerifier, es: SimulatedCdsClient, claims: dict[str, Any]) -> None:
    assert refusal(verifier, es.authorization(AUD, **claims)).reason == "malformed"


def test_wrong_typ(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization(AUD, headers={"typ": "at+jwt"})).reason == "malformed"


def test_replayed(verifier: CdsTokenVerifier, es: SimulatedCdsClient, rs: SimulatedCdsClient) -> None:
    authorization = es.authorization(AUD)
    verify(verifier, authorization)
    error = refusal(verifier, authorization)
    assert error.reason == "replayed"
    # a new token with the same jti is a replay too; the same jti from another issuer is not
    jti = "c2f0e4d2-shared"
    verify(verifier, es.authorization(AUD, jti=jti))
    assert refusal(verifier, es.authorization(AUD, jti=jti)).reason == "replayed"
    assert verify(verifier, rs.authorization(AUD, jti=jti)).jti == jti


def test_refused_token_does_not_use_up_its_jti(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    assert refusal(verifier, es.authorization("https://elsewhere.example.org", jti="once")).reason == (
        "wrong-audience"
    )
    assert verify(verifier, es.authorization(AUD, jti="once")).jti == "once"


def test_jku_with_an_inline_entry_is_refused(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    error = refusal(verifier, es.authorization(AUD, headers={"jku": "https://attacker.example.com/jwks"}))
    assert error.reason == "wrong-jku"
    assert "attacker" not in str(error)


def test_messages_do_not_repeat_the_token(verifier: CdsTokenVerifier, es: SimulatedCdsClient) -> None:
    now = int(time.time())
    forgeries = [
        es.token(AUD, jti="secret-jti-1", exp=now - 100, iat=now - 160),
        es.token("https://secret-aud.example.org", jti="secret-jti-2"),
        es.token(AUD, jti="secret-jti-3", key=new_key("ES384")),
        es.token(AUD, jti="secret-jti-4", algorithm="HS256"),
        es.token(AUD, jti="secret-jti-5", iss="https://secret-iss.example.org"),
    ]
    for token in forgeries:
        message = str(refusal(verifier, f"Bearer {token}"))
        assert "secret" not in message and token not in message


# -- JWK Sets at a jwks_url ------------------------------------------------------------------------


class JwksServer:
    """A client's JWK Set URL (`httpx.MockTransport`): counts the fetches; can fail on demand."""

    def __init__(self, client: SimulatedCdsClient) -> None:
        self.client = client
        self.fetches = 0
        self.fail: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        assert str(request.url) == JWKS_URL and request.method == "GET"
        if self.fail is not None:
            return self.fail(request)
        return httpx.Response(200, json=self.client.jwks())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def remote() -> SimulatedCdsClient:
    return SimulatedCdsClient("https://remote-ehr.example.org", jwks_url=JWKS_URL)


def _run_remote(
    remote: SimulatedCdsClient,
    server: JwksServer,
    steps: Callable[[CdsTokenVerifier, Clock], Any],
    policy: JwksPolicy = POLICY,
) -> Any:
    clock = Clock()

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            registry = CdsClientRegistry.from_json(remote.allow_list(inline=False))
            verifier = CdsTokenVerifier(
                registry, MemoryReplayCache(), http=http, jwks_policy=policy, clock=clock
            )
            return await steps(verifier, clock)

    return asyncio.run(go())


async def _outcome(verifier: CdsTokenVerifier, authorization: str) -> str:
    try:
        await verifier.verify(authorization, AUD)
    except CdsAuthenticationError as exc:
        return exc.reason
    return "accepted"


def test_jwks_url_fetched_once_and_kept(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        seen = [await _outcome(verifier, remote.authorization(AUD)) for _ in range(3)]
        clock.now += 599
        seen.append(await _outcome(verifier, remote.authorization(AUD)))
        return seen

    assert _run_remote(remote, server, steps) == ["accepted"] * 4
    assert server.fetches == 1


def test_jwks_url_fetched_again_after_ttl(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        seen = [await _outcome(verifier, remote.authorization(AUD))]
        clock.now += 601
        seen.append(await _outcome(verifier, remote.authorization(AUD)))
        return seen

    assert _run_remote(remote, server, steps) == ["accepted", "accepted"]
    assert server.fetches == 2


def test_jku_must_be_the_allow_listed_url(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        return [
            await _outcome(verifier, remote.authorization(AUD)),  # jku == jwks_url
            await _outcome(verifier, remote.authorization(AUD, headers={"jku": OMIT})),
            await _outcome(
                verifier, remote.authorization(AUD, headers={"jku": "https://evil.example.com/jwks"})
            ),
            await _outcome(verifier, remote.authorization(AUD, headers={"jku": JWKS_URL + "?x=1"})),
        ]

    assert _run_remote(remote, server, steps) == ["accepted", "accepted", "wrong-jku", "wrong-jku"]
    assert server.fetches == 1


def test_unknown_kid_refetches_at_most_once_per_interval(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[tuple[str, int]]:
        seen = []
        for now, kid in [
            (0, remote.kid),
            (31, "forged-1"),
            (32, "forged-2"),
            (40, "forged-3"),
            (62, "forged-4"),
        ]:
            clock.now = 1000.0 + now
            reason = await _outcome(verifier, remote.authorization(AUD, headers={"kid": kid}))
            seen.append((reason, server.fetches))
        return seen

    assert _run_remote(remote, server, steps) == [
        ("accepted", 1),
        ("unknown-kid", 2),  # 31 s after the last fetch: fetched again
        ("unknown-kid", 2),  # within 30 s of it: not
        ("unknown-kid", 2),
        ("unknown-kid", 3),
    ]


def test_concurrent_unknown_kids_share_one_fetch(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        forged = [remote.authorization(AUD, headers={"kid": f"forged-{i}"}) for i in range(20)]
        return list(await asyncio.gather(*(_outcome(verifier, a) for a in forged)))

    assert _run_remote(remote, server, steps) == ["unknown-kid"] * 20
    assert server.fetches == 1


def test_rotated_key_is_found_by_refetching(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        seen = [await _outcome(verifier, remote.authorization(AUD))]
        remote.rotate(algorithm="RS384")
        clock.now += 45
        seen.append(await _outcome(verifier, remote.authorization(AUD)))
        return seen

    assert _run_remote(remote, server, steps) == ["accepted", "accepted"]
    assert server.fetches == 2


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda r: httpx.Response(500, text="down"), "HTTP 500"),
        (lambda r: httpx.Response(404), "not found"),
        (lambda r: httpx.Response(302, headers={"Location": "https://evil.example.com/jwks"}), "HTTP 302"),
        (lambda r: httpx.Response(200, text="<html>"), "cannot be used"),
        (lambda r: httpx.Response(200, json={"keys": []}), "no usable signing key"),
        (lambda r: httpx.Response(200, content=b"{" + b" " * (2 << 20) + b"}"), "larger than"),
    ],
)
def test_unusable_jwks_url(
    remote: SimulatedCdsClient, answer: Callable[[httpx.Request], httpx.Response], match: str
) -> None:
    server = JwksServer(remote)
    server.fail = answer

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> CdsJwksUnavailable:
        with pytest.raises(CdsJwksUnavailable, match=match) as caught:
            await verifier.verify(remote.authorization(AUD), AUD)
        return caught.value

    error = _run_remote(remote, server, steps)
    assert error.reason == "jwks-unavailable"


def test_unreachable_jwks_url_is_not_hammered(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server.fail = refuse

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[tuple[str, int]]:
        seen = []
        for now in (0, 5, 29, 31):
            clock.now = 1000.0 + now
            seen.append((await _outcome(verifier, remote.authorization(AUD)), server.fetches))
        server.fail = None
        clock.now += 30
        seen.append((await _outcome(verifier, remote.authorization(AUD)), server.fetches))
        return seen

    assert _run_remote(remote, server, steps) == [
        ("jwks-unavailable", 1),
        ("jwks-unavailable", 1),
        ("jwks-unavailable", 1),
        ("jwks-unavailable", 2),
        ("accepted", 3),
    ]


def test_stale_jwks_is_used_while_the_url_is_down(remote: SimulatedCdsClient) -> None:
    server = JwksServer(remote)

    async def steps(verifier: CdsTokenVerifier, clock: Clock) -> list[str]:
        seen = [await _outcome(verifier, remote.authorization(AUD))]
        server.fail = lambda r: httpx.Response(503)
        clock.now += 700
        seen.append(await _outcome(verifier, remote.authorization(AUD)))
        seen.append(await _outcome(verifier, remote.authorization(AUD, headers={"kid": "forged"})))
        return seen

    assert _run_remote(remote, server, steps) == ["accepted", "accepted", "unknown-kid"]
    assert server.fetches == 2


def test_verifier_without_http_client_opens_its_own() -> None:
    """Nothing listens on port 1 of the loopback interface: refused, and said so."""
    client = SimulatedCdsClient("https://ehr.example.org", jwks_url="http://127.0.0.1:1/jwks")
    verifier = CdsTokenVerifier(
        CdsClientRegistry.from_json(client.allow_list(inline=False)),
        MemoryReplayCache(),
        jwks_policy=JwksPolicy(timeout=2.0),
    )
    error = refusal(verifier, client.authorization(AUD))
    assert isinstance(error, CdsJwksUnavailable) and "127.0.0.1:1" in str(error)


SPEC_TOKEN = (  # CDS Hooks 2.0.1, "Trusting CDS Clients", Example: the complete JWT
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVoci5leGFtcGxl"
    "LmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1w"
    "bGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUy"
    "MmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMw"
    "MmEyIn0.d1WfLjGRKlcWB94l9do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vX"
    "WEIYTdjooZdooCSDf2L8-i4awdoUwiEb"
)
SPEC_JWK = {
    "kty": "EC",
    "use": "sig",
    "crv": "P-384",
    "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}


def test_the_specifications_example_verifies_and_has_expired() -> None:
    """The example JWT (2015) is signed by the example key; only its exp refuses it, after the signature."""
    served: list[str] = []

    def jwks(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return httpx.Response(200, json={"keys": [SPEC_JWK]})

    async def go() -> CdsAuthenticationError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(jwks)) as http:
            allow = {"https://fhir-ehr.example.com/": {"jwks_url": "https://fhir-ehr.example.com/jwk_uri"}}
            verifier = CdsTokenVerifier(CdsClientRegistry.from_json(allow), MemoryReplayCache(), http=http)
            with pytest.raises(CdsAuthenticationError) as caught:
                await verifier.verify(
                    f"Bearer {SPEC_TOKEN}", "https://cds.example.org/cds-services/some-service"
                )
            return caught.value

    assert asyncio.run(go()).reason == "expired"
    assert served == ["https://fhir-ehr.example.com/jwk_uri"]
    with pytest.raises(CdsClientsConfigError, match="private key material"):  # the example's private JWK
        CdsClientRegistry.from_json(
            {"https://fhir-ehr.example.com/": {"jwks": {"keys": [{**SPEC_JWK, "d": "x"}]}}}
        )


# -- the replay cache ---------------------------------------------------------------------------


def test_memory_replay_cache_remembers_until_expiry() -> None:
    now = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]
    cache = MemoryReplayCache(now=lambda: now[0])
    later = now[0] + timedelta(minutes=5)

    async def steps() -> list[bool]:
        return [
            await cache.use("https://a.example.org", "j1", later),
            await cache.use("https://a.example.org", "j1", later),
            await cache.use("https://b.example.org", "j1", later),
            await cache.use("https://a.example.org", "j2", now[0] + timedelta(minutes=1)),
        ]

    assert asyncio.run(steps()) == [True, False, True, True]
    assert len(cache) == 3
    now[0] += timedelta(minutes=2)
    assert len(cache) == 2
    now[0] = later
    assert len(cache) == 0
    assert asyncio.run(cache.use("https://a.example.org", "j1", later + timedelta(minutes=5))) is True


def test_memory_replay_cache_is_safe_across_tasks_and_threads() -> None:
    cache = MemoryReplayCache()
    until = datetime.now(UTC) + timedelta(minutes=5)

    async def many() -> list[bool]:
        return list(await asyncio.gather(*(cache.use("iss", "same", until) for _ in range(50))))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for batch in pool.map(lambda _: asyncio.run(many()), range(8)) for r in batch]
    assert results.count(True) == 1 and len(results) == 400
