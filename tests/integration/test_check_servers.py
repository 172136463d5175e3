"""``crosscheck check`` over a real FHIR server and a real PACS gives what it gives over the files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from connectors import read_bundle
from connectors.auth import Credentials
from connectors.fhir.fetch import fetch_record
from connectors.fhir.rest import FhirClient
from plugin.cli import main

pytestmark = pytest.mark.integration


def _manifest(cohort: Path) -> list[dict]:
    return json.loads((cohort / "manifest.json").read_text())["cases"]


def _patients(cohort: Path) -> list[str]:
    return sorted({c["patient_id"] for c in _manifest(cohort)})


def _results(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    for r in results:
        r.pop("timings_ms")
    return sorted(results, key=lambda r: r["case"]["study_instance_uid"])


def _env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_every_case_scores_the_same_from_servers_and_from_files(loaded, server_env, monkeypatch, capsys):
    site = str(loaded / "site.json")
    compared = 0
    for pid in _patients(loaded):
        from_files = _results(
            capsys,
            [
                "check",
                "--bundle",
                str(loaded / "bundles" / f"{pid}.json"),
                "--dicom",
                str(loaded / "dicom" / pid),
                "--site",
                site,
                "--format",
                "json",
            ],
        )
        with monkeypatch.context() as mp:
            _env(mp, server_env)
            from_servers = _results(capsys, ["check", "--patient", pid, "--site", site, "--format", "json"])
        assert from_servers == from_files, pid
        compared += len(from_files)
    assert compared == len(_manifest(loaded))


def test_record_from_server_equals_record_from_bundle(loaded, sekmet):
    async def fetch(pid: str):
        creds = Credentials(username=sekmet.user[0], password=sekmet.user[1])
        async with FhirClient(sekmet.url, credentials=creds) as fhir:
            return await fetch_record(fhir, pid, capabilities=await fhir.capabilities())

    for pid in _patients(loaded):
        (from_file,) = read_bundle(loaded / "bundles" / f"{pid}.json")
        fetched = asyncio.run(fetch(pid))
        assert fetched.record == from_file, pid
        assert fetched.record.problems == ()


def test_one_study_by_uid_over_dimse_matches_files(loaded, orthanc, sekmet, monkeypatch, capsys):
    case = _manifest(loaded)[0]
    from_files = [
        r
        for r in _results(
            capsys,
            [
                "check",
                "--bundle",
                str(loaded / case["bundle"]),
                "--dicom",
                str(loaded / case["dicom"]),
                "--format",
                "json",
            ],
        )
        if r["case"]["study_instance_uid"] == case["study_instance_uid"]
    ]
    monkeypatch.setenv("CROSSCHECK_FHIR_URL", sekmet.url)
    monkeypatch.setenv("CROSSCHECK_FHIR_TOKEN", sekmet.token)
    from_dimse = _results(
        capsys,
        [
            "check",
            "--patient",
            case["patient_id"],
            "--study",
            case["study_instance_uid"],
            "--dimse",
            f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}",
            "--format",
            "json",
        ],
    )
    assert from_dimse == from_files
