"""Operations over real HTTP: liveness, readiness (and what makes it fail), and OAuth2 bearer
tokens for the REST API, checked against the issuer's JWKS."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.auth import Credentials
from plugin.servers import ServerSettings
from plugin.service.background import free_port
from tests.plugin.service.conftest import Serve

pytestmark = pytest.mark.slow


def test_healthz_and_readyz_without_servers(serve: Serve) -> None:
    with serve() as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["model"]["ok"] and checks["model"]["sha256"]
    assert checks["database"]["ok"]


def test_readyz_is_503_when_the_fhir_server_is_down(serve: Serve) -> None:
    down = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    servers = ServerSettings(fhir_url=down, fhir_credentials=Credentials(token="t"), timeout=2.0)
    with serve(servers) as url:
        ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and body["checks"]["fhir"]["ok"] is False
    assert body["checks"]["model"]["ok"] and body["checks"]["database"]["ok"]


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[str, ec.EllipticCurvePrivateKey]]:
    """An OAuth2 issuer's JWKS endpoint on loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", key
    finally:
        server.shutdown()


def test_oauth2_bearer_tokens_from_the_issuer_are_accepted(
    serve: Serve, issuer: tuple[str, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    jwks_url, key = issuer
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.org",
        "aud": "crosscheck",
        "sub": "analytics",
        "iat": now,
        "exp": now + 300,
    }

    def token(**changes: object) -> str:
        return jwt.encode({**claims, **changes}, key, algorithm="ES256", headers={"kid": "k1"})

    settings = {
        "oauth_issuer": "https://idp.example.org",
        "oauth_jwks_url": jwks_url,
        "oauth_audience": "crosscheck",
    }
    with serve(**settings) as url:

        def get(bearer: str) -> httpx.Response:
            return httpx.get(f"{url}/v1/results/none", headers={"Authorization": f"Bearer {bearer}"})

        assert get(token()).status_code == 404  # authenticated: the result just does not exist
        for bad in (
            token(aud="someone-else"),
            token(iss="https://evil.example.org"),
            token(exp=now - 3600),
            jwt.encode(
                claims, "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256", headers={"kid": "k1"}
            ),
            jwt.encode(
                claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"}
            ),
        ):
            refused = get(bad)
            assert refused.status_code == 401, refused.text
            assert refused.json()["resourceType"] == "OperationOutcome"
