"""The FHIR connector against a real FHIR R4 server (sekmet-fhir): auth, paging, failures, bulk export."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from connectors import read_ndjson
from connectors.auth import Credentials, SmartClient
from connectors.errors import (
    AuthenticationFailed,
    FhirResourceInvalid,
    RemoteNotFound,
    ServerTimeout,
    ServerUnreachable,
)
from connectors.fhir.bulk import bulk_export
from connectors.fhir.fetch import fetch_record
from connectors.fhir.rest import FhirClient
from connectors.http import RetryPolicy, Timeouts
from plugin.cli import main

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=2, backoff=0.01, max_wait=0.05)


def _basic(sekmet) -> Credentials:
    return Credentials(username=sekmet.user[0], password=sekmet.user[1])


def _run(coro):
    return asyncio.run(coro)


async def _put_transaction(sekmet, resources: list[dict]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    async with FhirClient(sekmet.url, credentials=_basic(sekmet)) as fhir:
        await fhir.transaction(bundle)


def _patient(pid: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:oid:1.2.3.4.5.1", "value": f"MRN-{pid}"}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }


def _glucose(pid: str, n: int, status: str = "final") -> dict:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-glu-{n}",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"2024-01-01T{n // 60 % 24:02d}:{n % 60:02d}:00Z",
        "valueQuantity": {
            "value": 90 + n % 20,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["basic", "bearer", "smart-rs384", "smart-es384"])
def test_every_kind_of_credentials_reads_a_patient(loaded, sekmet, kind):
    if kind == "basic":
        creds = _basic(sekmet)
    elif kind == "bearer":
        creds = Credentials(token=sekmet.token)
    else:
        alg, client_id, key = (
            ("RS384", "crosscheck-rs", sekmet.smart_key)
            if kind == "smart-rs384"
            else ("ES384", "crosscheck-es", sekmet.smart_key_es)
        )
        creds = Credentials(
            smart=SmartClient.from_key_file(client_id, key, algorithm=alg, scope="system/*.read")
        )

    async def go() -> tuple[dict, int]:
        async with FhirClient(sekmet.url, credentials=creds) as fhir:
            first = await fhir.read("Patient", "pat-000000")
            await fhir.read("Patient", "pat-000001")
            return first, fhir.requests

    patient, requests = _run(go())
    assert patient["id"] == "pat-000000"
    assert requests == 2


def test_wrong_password_is_authentication_failed(sekmet):
    async def go() -> None:
        async with FhirClient(
            sekmet.url, credentials=Credentials(username="crosscheck", password="wrong")
        ) as fhir:
            await fhir.read("Patient", "pat-000000")

    with pytest.raises(AuthenticationFailed, match="401") as err:
        _run(go())
    assert "wrong" not in str(err.value)


def test_smart_client_with_an_unregistered_key_is_refused(sekmet, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    creds = Credentials(smart=SmartClient("crosscheck-rs", pem, algorithm="RS384"))

    async def go() -> None:
        async with FhirClient(sekmet.url, credentials=creds) as fhir:
            await fhir.read("Patient", "pat-000000")

    with pytest.raises(AuthenticationFailed, match="token endpoint"):
        _run(go())


def test_cli_with_wrong_credentials_says_one_line_and_exits_2(loaded, sekmet, orthanc, monkeypatch, capsys):
    monkeypatch.setenv("CROSSCHECK_FHIR_PASSWORD", "not-the-password")
    code = main(
        [
            "check",
            "--fhir",
            sekmet.url,
            "--fhir-user",
            "crosscheck",
            "--patient",
            "pat-000000",
            "--dicomweb",
            orthanc.dicomweb,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("crosscheck check: error: ")
    assert "refused the credentials" in err and "not-the-password" not in err


# -- failures ----------------------------------------------------------------------------------------


def test_unknown_patient_is_remote_not_found(loaded, sekmet):
    async def go() -> None:
        async with FhirClient(sekmet.url, credentials=_basic(sekmet)) as fhir:
            await fetch_record(fhir, "no-such-patient")

    with pytest.raises(RemoteNotFound, match="no Patient/no-such-patient"):
        _run(go())


def test_server_that_is_down_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused

        async def go() -> None:
            async with FhirClient(f"http://127.0.0.1:{port}/fhir", retry=FAST) as fhir:
                await fhir.capabilities()

        with pytest.raises(ServerUnreachable, match="unreachable"):
            _run(go())


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_slow_server_times_out(silent_server):
    async def go() -> None:
        async with FhirClient(
            f"http://127.0.0.1:{silent_server}/fhir", timeouts=Timeouts(connect=1, read=0.3), retry=FAST
        ) as fhir:
            await fhir.read("Patient", "x")

    with pytest.raises(ServerTimeout, match="did not answer within the timeout"):
        _run(go())


def test_invalid_resource_is_listed_not_fatal_unless_strict(loaded, sekmet):
    pid = "pat-invalid-obs"
    _run(_put_transaction(sekmet, [_patient(pid), _glucose(pid, 1), _glucose(pid, 2, status="bogus")]))

    async def go(strictness: str):
        async with FhirClient(sekmet.url, credentials=_basic(sekmet)) as fhir:
            return await fetch_record(fhir, pid, strictness=strictness)

    fetched = _run(go("warn"))
    assert [lab.id for lab in fetched.record.labs] == [f"{pid}-glu-1"]
    assert len(fetched.record.problems) == 1
    assert fetched.record.problems[0].startswith(f"Observation/{pid}-glu-2")
    with pytest.raises(FhirResourceInvalid, match=f"Observation/{pid}-glu-2"):
        _run(go("raise"))


# -- paging and request counts -----------------------------------------------------------------------


@pytest.mark.parametrize("observations", [10, 500])
def test_requests_per_record_grow_only_with_paging(loaded, sekmet, observations):
    pid = f"pat-paging-{observations}"
    _run(_put_transaction(sekmet, [_patient(pid), *(_glucose(pid, n) for n in range(observations))]))

    async def go():
        async with FhirClient(sekmet.url, credentials=_basic(sekmet), page_size=200) as fhir:
            return await fetch_record(fhir, pid, capabilities=await fhir.capabilities())

    fetched = _run(go())
    assert len(fetched.record.labs) == observations
    pages = -(-observations // 200)
    # Patient read + 10 searches of one page each, plus the extra Observation pages.
    assert fetched.requests == 11 + (pages - 1)


# -- bulk data -----------------------------------------------------------------------------------------


def test_bulk_export_gives_the_same_records_as_the_bundles(loaded, sekmet, tmp_path):
    async def go():
        async with FhirClient(sekmet.url, credentials=_basic(sekmet)) as fhir:
            return await bulk_export(fhir, tmp_path / "export", level="patient")

    export = _run(go())
    assert export.files and not export.errors
    assert all(f.suffix == ".ndjson" for f in export.files)
    exported = {r.patient_id: r for r in read_ndjson(tmp_path / "export")}
    manifest = json.loads((loaded / "manifest.json").read_text())
    bundles = {c["bundle"] for c in manifest["cases"]}
    for bundle in bundles:
        from connectors import read_bundle

        (record,) = read_bundle(loaded / bundle)
        assert exported[record.patient_id].labs == record.labs
        assert exported[record.patient_id].conditions == record.conditions


def test_export_cli_writes_ndjson(loaded, sekmet, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CROSSCHECK_FHIR_TOKEN", sekmet.token)
    out = tmp_path / "cli-export"
    assert main(["export", "--fhir", sekmet.url, "--out", str(out), "--type", "Patient,Observation"]) == 0
    assert "exported" in capsys.readouterr().out
    assert sorted({p.name.split(".")[0] for p in out.glob("*.ndjson")}) == ["Observation", "Patient"]


def test_include_and_revinclude(loaded, sekmet):
    async def go() -> tuple[list[dict], list[dict]]:
        async with FhirClient(sekmet.url, credentials=_basic(sekmet)) as fhir:
            rev = await fhir.search_all(
                "Patient", {"_id": "pat-000000", "_revinclude": "ImagingStudy:patient"}
            )
            inc = await fhir.search_all(
                "ImagingStudy", {"patient": "pat-000000", "_include": "ImagingStudy:basedon"}
            )
            return rev, inc

    rev, inc = _run(go())
    assert {r["resourceType"] for r in rev} == {"Patient", "ImagingStudy"}
    assert {r["resourceType"] for r in inc} == {"ImagingStudy", "ServiceRequest"}
