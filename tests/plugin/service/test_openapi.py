"""The published OpenAPI document, tested with schemathesis against the running service:
generated requests (valid and not) never get a server error, and every answer conforms to the
document (status codes, content types, bodies).

(schemathesis' own pytest plugin does not work with pytest 9 yet, so each operation's
hypothesis strategy is driven here directly.)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from plugin.service.app import create_app
from plugin.service.auth import hash_api_key
from plugin.service.background import serve_in_background
from plugin.settings import Settings
from tests.plugin.cds.cds_client import SimulatedCdsClient
from tests.plugin.service.conftest import API_KEY

pytestmark = pytest.mark.slow


@schemathesis.serializer("multipart/related")
def _stow_body(ctx: Any, value: Any) -> bytes:
    """A STOW-RS body as generated: its raw bytes (a string or bytes, per the schema's binary)."""
    return value if isinstance(value, bytes) else str(value).encode()


# The document does not depend on the settings: build it once, without serving, to parametrize.
_DOCUMENT = create_app(Settings(insecure_no_auth=True, data_dir=Path(tempfile.gettempdir()))).openapi()
_SCHEMA = schemathesis.openapi.from_dict(_DOCUMENT)
_OPERATIONS = {op.ok().label: op.ok() for op in _SCHEMA.get_all_operations()}


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory, scorer: Any) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openapi")
    keys, clients = root / "keys.json", root / "clients.json"
    keys.write_text(json.dumps({"schemathesis": hash_api_key(API_KEY)}))
    clients.write_text(json.dumps(SimulatedCdsClient().allow_list()))
    app = create_app(Settings(data_dir=root / "data", api_keys=keys, cds_clients=clients), scorer=scorer)
    with serve_in_background(app) as url:
        yield url


@pytest.mark.parametrize("label", sorted(_OPERATIONS))
def test_the_api_conforms_to_its_openapi_document(label: str, live_url: str) -> None:
    operation = _OPERATIONS[label]

    # A file's bytes cannot be described by a schema: generated "valid" DICOM parts are noise
    # the service rightly refuses (400), so uploads skip the check that valid data is accepted.
    uploads = {"multipart/form-data", "multipart/related"} & set(
        (operation.definition.raw.get("requestBody") or {}).get("content", {})
    )
    excluded = [positive_data_acceptance] if uploads else []

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(base_url=live_url, headers={"X-API-Key": API_KEY}, excluded_checks=excluded)

    check()


def test_the_document_names_every_route(live_url: str) -> None:
    served = httpx.get(f"{live_url}/openapi.json").json()
    assert served == _DOCUMENT
    for path in (
        "/v1/crosscheck",
        "/v1/results/{result_id}",
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
        "/ingest/studies",
        "/ingest/fhir-subscription",
    ):
        assert path in served["paths"], path
