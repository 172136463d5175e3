"""`connectors.auth`: credentials, the SMART client assertion, and the SMART Backend Services flow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connectors.auth import (
    ASSERTION_TYPE,
    BearerToken,
    Credentials,
    SmartBackendAuth,
    SmartClient,
    httpx_auth,
    requests_session,
)
from connectors.errors import AuthenticationFailed
from connectors.fhir.rest import FhirClient
from connectors.http import RetryPolicy

BASE = "https://ehr.example.org/fhir"
DISCOVERY = f"{BASE}/.well-known/smart-configuration"
TOKEN_URL = "https://auth.example.org/oauth/token"
PATIENT = f"{BASE}/Patient/p1"


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def client(rsa_key: rsa.RSAPrivateKey) -> SmartClient:
    return SmartClient(
        client_id="crosscheck", private_key_pem=pem(rsa_key), key_id="key-1", scope="system/*.read"
    )


# -- the client assertion -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_assertion_is_signed_for_the_token_endpoint(
    algorithm: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key = rsa_key if algorithm == "RS384" else ec_key
    smart = SmartClient(client_id="crosscheck", private_key_pem=pem(key), algorithm=algorithm, key_id="kid-7")
    first, second = smart.assertion(TOKEN_URL), smart.assertion(TOKEN_URL)

    header = jwt.get_unverified_header(first)
    assert header["alg"] == algorithm and header["kid"] == "kid-7" and header["typ"] == "JWT"
    assert "jku" not in header
    claims = jwt.decode(first, key.public_key(), algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "crosscheck"
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - claims["iat"] <= 300
    again = jwt.decode(second, key.public_key(), algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["jti"] and again["jti"] != claims["jti"]


def test_assertion_does_not_verify_with_another_key(client: SmartClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(client.assertion(TOKEN_URL), other.public_key(), algorithms=["RS384"], audience=TOKEN_URL)


def test_assertion_times_and_optional_headers(rsa_key: rsa.RSAPrivateKey) -> None:
    smart = SmartClient(
        client_id="c", private_key_pem=pem(rsa_key), jku="https://app.example.org/.well-known/jwks.json"
    )
    token = smart.assertion(TOKEN_URL, now=1_000_000.7)
    header = jwt.get_unverified_header(token)
    assert "kid" not in header
    assert header["jku"] == "https://app.example.org/.well-known/jwks.json"
    claims = jwt.decode(
        token, rsa_key.public_key(), algorithms=["RS384"], audience=TOKEN_URL, options={"verify_exp": False}
    )
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_300)


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "none", "rs384"])
def test_smart_client_refuses_other_algorithms(algorithm: str, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="RS384, ES384"):
        SmartClient(client_id="c", private_key_pem=pem(rsa_key), algorithm=algorithm)


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        ("ES384", "rsa"),
        ("RS384", "ec"),
        ("ES384", "p256"),
        ("RS384", "garbage"),
    ],
)
def test_a_key_that_cannot_sign_the_algorithm_is_a_value_error(
    algorithm: str, key: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys = {
        "rsa": pem(rsa_key),
        "ec": pem(ec_key),
        "p256": pem(ec.generate_private_key(ec.SECP256R1())),
        "garbage": b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    }
    smart = SmartClient(client_id="c", private_key_pem=keys[key], algorithm=algorithm)
    with pytest.raises(ValueError, match=f"cannot sign {algorithm}") as info:
        smart.assertion(TOKEN_URL)
    assert "PRIVATE KEY" not in str(info.value)
    assert info.value.__cause__ is None


def test_from_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key_file = tmp_path / "smart.pem"
    key_file.write_bytes(pem(rsa_key))
    smart = SmartClient.from_key_file("c", key_file, algorithm="RS384", scope="system/Patient.read")
    assert smart.private_key_pem == pem(rsa_key) and smart.scope == "system/Patient.read"
    with pytest.raises(ValueError, match="cannot read the SMART private key") as info:
        SmartClient.from_key_file("c", tmp_path / "missing.pem")
    assert "missing.pem" in str(info.value)


# -- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"token": "t", "username": "ann", "password": "pw"},
        {"token": "t", "smart": "smart"},
        {"username": "ann", "password": "pw", "smart": "smart"},
    ],
    ids=["token+user", "token+smart", "user+smart"],
)
def test_credentials_refuse_several_kinds(options: dict[str, Any], client: SmartClient) -> None:
    if "smart" in options:
        options["smart"] = client
    with pytest.raises(ValueError, match="not several"):
        Credentials(**options)


@pytest.mark.parametrize("options", [{"username": "ann"}, {"password": "pw"}])
def test_basic_credentials_need_user_and_password(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="both a user and a password"):
        Credentials(**options)


def test_credentials_kind(client: SmartClient) -> None:
    assert Credentials().kind == "none"
    assert Credentials(token="t").kind == "bearer"
    assert Credentials(username="ann", password="pw").kind == "basic"
    assert Credentials(smart=client).kind == "smart-backend"


def test_repr_never_shows_secrets(client: SmartClient) -> None:
    shown = [
        repr(Credentials(token="SECRET-TOKEN")),
        repr(Credentials(username="ann", password="SECRET-PW")),
        repr(Credentials(smart=client)),
        repr(client),
        repr(BearerToken("SECRET-TOKEN")),
        repr(SmartBackendAuth(client, BASE)),
    ]
    for text in shown:
        assert "SECRET" not in text
        assert "PRIVATE KEY" not in text and "MII" not in text
    assert "ann" in shown[1] and "crosscheck" in shown[2]


def test_httpx_auth_for_each_kind(client: SmartClient) -> None:
    assert httpx_auth(None, fhir_base=BASE) is None
    assert httpx_auth(Credentials(), fhir_base=BASE) is None
    assert isinstance(httpx_auth(Credentials(token="t"), fhir_base=BASE), BearerToken)
    assert isinstance(httpx_auth(Credentials(username="ann", password="pw"), fhir_base=BASE), httpx.BasicAuth)
    smart = httpx_auth(Credentials(smart=client), fhir_base=BASE + "/")
    assert isinstance(smart, SmartBackendAuth) and smart.fhir_base == BASE


def test_requests_session_sends_basic_or_bearer_and_refuses_smart(client: SmartClient) -> None:
    basic = requests_session(Credentials(username="ann", password="pw"))
    assert basic.auth == ("ann", "pw") and "Authorization" not in basic.headers
    bearer = requests_session(Credentials(token="t"))
    assert bearer.auth is None and bearer.headers["Authorization"] == "Bearer t"
    none = requests_session(None)
    assert none.auth is None and "Authorization" not in none.headers
    with pytest.raises(ValueError, match="not a SMART client"):
        requests_session(Credentials(smart=client))


# -- SMART Backend Services -----------------------------------------------------------------------


class SmartServer:
    """Discovery, a token endpoint that checks the assertion, and a FHIR server taking live tokens only."""

    def __init__(
        self,
        public_key: Any,
        *,
        discovery: httpx.Response | None = None,
        token_answer: httpx.Response | None = None,
        expires_in: int = 3600,
    ) -> None:
        self.public_key = public_key
        self.discovery = discovery or httpx.Response(200, json={"token_endpoint": TOKEN_URL})
        self.token_answer = token_answer
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.bearers: list[str | None] = []  # Authorization on each FHIR request as it arrived

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) == DISCOVERY:
            return self.discovery
        if str(request.url) == TOKEN_URL:
            return self.token(request)
        authorization = request.headers.get("Authorization", "")
        self.bearers.append(authorization)  # httpx re-sends the same Request object on a retry
        token = authorization.removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})

    def token(self, request: httpx.Request) -> httpx.Response:
        if self.token_answer is not None:
            return self.token_answer
        assert request.method == "POST"
        form = {k: v for k, (v,) in parse_qs(request.content.decode()).items()}
        assert form["grant_type"] == "client_credentials"
        assert form["scope"] == "system/*.read"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        claims = jwt.decode(
            form["client_assertion"], self.public_key, algorithms=["RS384"], audience=TOKEN_URL
        )
        assert claims["iss"] == "crosscheck"
        self.issued.append(f"token-{len(self.issued) + 1}")
        body = {"access_token": self.issued[-1], "token_type": "bearer", "expires_in": self.expires_in}
        return httpx.Response(200, json=body)

    def urls(self) -> list[str]:
        return [f"{r.method} {r.url}" for r in self.requests]


def get_patient(server: SmartServer, auth: SmartBackendAuth, times: int = 1) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(server)) as http:
            return [await http.get(PATIENT) for _ in range(times)]

    return asyncio.run(go())


def test_discovery_then_token_then_request_with_bearer(
    client: SmartClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = SmartServer(rsa_key.public_key())
    (response,) = get_patient(server, SmartBackendAuth(client, BASE))
    assert response.status_code == 200
    assert server.urls() == [f"GET {DISCOVERY}", f"POST {TOKEN_URL}", f"GET {PATIENT}"]
    assert server.bearers == ["Bearer token-1"]


def test_a_configured_token_url_skips_discovery(rsa_key: rsa.RSAPrivateKey) -> None:
    smart = SmartClient(client_id="crosscheck", private_key_pem=pem(rsa_key), token_url=TOKEN_URL)
    server = SmartServer(rsa_key.public_key())
    (response,) = get_patient(server, SmartBackendAuth(smart, BASE))
    assert response.status_code == 200
    assert server.urls() == [f"POST {TOKEN_URL}", f"GET {PATIENT}"]


def test_token_is_reused_while_it_lives(client: SmartClient, rsa_key: rsa.RSAPrivateKey) -> None:
    server = SmartServer(rsa_key.public_key())
    responses = get_patient(server, SmartBackendAuth(client, BASE), times=2)
    assert [r.status_code for r in responses] == [200, 200]
    assert server.urls() == [f"GET {DISCOVERY}", f"POST {TOKEN_URL}", f"GET {PATIENT}", f"GET {PATIENT}"]
    assert server.bearers == ["Bearer token-1"] * 2


def test_token_about_to_expire_is_renewed(client: SmartClient, rsa_key: rsa.RSAPrivateKey) -> None:
    server = SmartServer(rsa_key.public_key(), expires_in=20)  # inside the 30 s refresh margin
    get_patient(server, SmartBackendAuth(client, BASE), times=2)
    assert server.issued == ["token-1", "token-2"]
    assert server.bearers == ["Bearer token-1", "Bearer token-2"]
    assert server.urls().count(f"GET {DISCOVERY}") == 1


def test_a_401_fetches_one_new_token_and_retries(client: SmartClient, rsa_key: rsa.RSAPrivateKey) -> None:
    server = SmartServer(rsa_key.public_key())
    auth = SmartBackendAuth(client, BASE)
    get_patient(server, auth)
    server.revoked.add("token-1")
    (response,) = get_patient(server, auth)
    assert response.status_code == 200
    assert server.urls()[3:] == [f"GET {PATIENT}", f"POST {TOKEN_URL}", f"GET {PATIENT}"]
    assert server.bearers == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


def test_a_second_401_is_returned_not_retried_again(client: SmartClient, rsa_key: rsa.RSAPrivateKey) -> None:
    server = SmartServer(rsa_key.public_key())
    server.revoked.update({"token-1", "token-2", "token-3"})
    (response,) = get_patient(server, SmartBackendAuth(client, BASE))
    assert response.status_code == 401
    assert server.issued == ["token-1", "token-2"]
    assert server.bearers == ["Bearer token-1", "Bearer token-2"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(400, json={"error": "invalid_client"}), "invalid_client"),
        (
            httpx.Response(401, json={"error": "invalid_client", "error_description": "unknown kid key-1"}),
            "unknown kid key-1",
        ),
        (
            httpx.Response(
                400,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "diagnostics": "bad jwt"}],
                },
            ),
            "error: bad jwt",
        ),
        (httpx.Response(200, json={"token_type": "bearer"}), "HTTP 200"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "HTTP 502"),
    ],
    ids=["invalid_client", "error_description", "outcome", "no-access-token", "not-json"],
)
def test_a_refusing_token_endpoint_is_authentication_failed(
    answer: httpx.Response, reason: str, client: SmartClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = SmartServer(rsa_key.public_key(), token_answer=answer)
    with pytest.raises(AuthenticationFailed) as info:
        get_patient(server, SmartBackendAuth(client, BASE))
    assert reason in str(info.value)
    assert "crosscheck" in str(info.value)
    assert info.value.status == answer.status_code
    assert info.value.url == TOKEN_URL
    assert f"GET {PATIENT}" not in server.urls()


@pytest.mark.parametrize(
    "discovery",
    [
        httpx.Response(200, json={"authorization_endpoint": "https://auth.example.org/authorize"}),
        httpx.Response(200, json={"token_endpoint": 42}),
        httpx.Response(404, json={"token_endpoint": TOKEN_URL}),
        httpx.Response(200, text="<html></html>"),
    ],
    ids=["no-token-endpoint", "not-a-string", "404", "not-json"],
)
def test_discovery_without_a_token_endpoint_is_authentication_failed(
    discovery: httpx.Response, client: SmartClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = SmartServer(rsa_key.public_key(), discovery=discovery)
    with pytest.raises(AuthenticationFailed, match="gave no token_endpoint") as info:
        get_patient(server, SmartBackendAuth(client, BASE))
    assert info.value.url == DISCOVERY
    assert server.urls() == [f"GET {DISCOVERY}"]


def test_fhir_client_with_smart_credentials(client: SmartClient, rsa_key: rsa.RSAPrivateKey) -> None:
    server = SmartServer(rsa_key.public_key())

    async def go() -> dict[str, Any]:
        async with FhirClient(
            BASE, credentials=Credentials(smart=client), transport=httpx.MockTransport(server)
        ) as fhir:
            return await fhir.read("Patient", "p1")

    assert asyncio.run(go()) == {"resourceType": "Patient", "id": "p1"}
    assert server.urls() == [f"GET {DISCOVERY}", f"POST {TOKEN_URL}", f"GET {PATIENT}"]


def test_fhir_client_reports_a_refused_token_unretried(
    client: SmartClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = SmartServer(
        rsa_key.public_key(), token_answer=httpx.Response(400, json={"error": "invalid_client"})
    )

    async def go() -> None:
        retry = RetryPolicy(attempts=3, backoff=0.001, max_wait=0.05)
        async with FhirClient(
            BASE, credentials=Credentials(smart=client), transport=httpx.MockTransport(server), retry=retry
        ) as fhir:
            await fhir.read("Patient", "p1")

    with pytest.raises(AuthenticationFailed, match="invalid_client"):
        asyncio.run(go())
    assert server.urls() == [f"GET {DISCOVERY}", f"POST {TOKEN_URL}"]
