"""Time to assemble a Case from the servers vs from files, and the requests it takes.

Usage: ``python bench/bench_assemble.py [--patients N] [--seed S] [--repeat R]``.

Starts a real Orthanc and a real sekmet-fhir on loopback (as the integration tests
do: `tests/integration/servers.py`), loads a simulated cohort into them with
``crosscheck load``, then for every patient assembles the cases three ways:

- files: ``read_bundle`` + ``read_dicom`` + ``link_cases`` on the cohort folder;
- FHIR + DICOMweb: ``fetch_cases`` (record searches, QIDO, WADO metadata, WADO instances);
- FHIR + DIMSE: ``fetch_cases`` with C-FIND and C-GET.

Then it adds two patients with 10 and with 500 laboratory Observations and counts
the FHIR requests their records take: they must not grow with the number of
resources beyond paging (``_count`` 200).

Prints medians and means in milliseconds, requests per case, and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors import link_cases, read_bundle, read_dicom
from connectors.auth import Credentials
from connectors.dicom.dimse import DimsePeer, DimseSource
from connectors.dicom.web import DicomWebSource
from connectors.fhir.fetch import fetch_record
from connectors.fhir.rest import FhirClient
from connectors.remote import ImagingSource, fetch_cases
from plugin.cli import main as crosscheck

ROOT = Path(__file__).resolve().parents[1]


def _servers() -> Any:
    spec = importlib.util.spec_from_file_location("servers", ROOT / "tests" / "integration" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["servers"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples):7.1f} ms   mean {statistics.fmean(samples):7.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the cohort for each way")
    args = parser.parse_args(argv)
    servers = _servers()

    with tempfile.TemporaryDirectory(prefix="bench-assemble-") as tmp:
        root = Path(tmp)
        orthanc = servers.start_orthanc(root / "orthanc")
        sekmet = servers.start_sekmet(root / "sekmet")
        try:
            cohort = root / "cohort"
            quiet = ["-q"]
            assert (
                crosscheck(
                    [
                        "simulate",
                        "--out",
                        str(cohort),
                        "--patients",
                        str(args.patients),
                        "--seed",
                        str(args.seed),
                        *quiet,
                    ]
                )
                == 0
            )
            fhir_creds = Credentials(username=sekmet.user[0], password=sekmet.user[1])
            pacs_creds = Credentials(username=orthanc.user[0], password=orthanc.user[1])
            os.environ["CROSSCHECK_FHIR_PASSWORD"] = sekmet.user[1]
            os.environ["CROSSCHECK_DICOMWEB_PASSWORD"] = orthanc.user[1]
            assert (
                crosscheck(
                    [
                        "load",
                        str(cohort),
                        "--fhir",
                        sekmet.url,
                        "--fhir-user",
                        sekmet.user[0],
                        "--dicomweb",
                        orthanc.dicomweb,
                        "--dicomweb-user",
                        orthanc.user[0],
                        *quiet,
                    ]
                )
                == 0
            )
            patients = sorted(
                {c["patient_id"] for c in json.loads((cohort / "manifest.json").read_text())["cases"]}
            )

            def from_files(pid: str) -> tuple[int, int]:
                records = read_bundle(cohort / "bundles" / f"{pid}.json")
                cases = link_cases(read_dicom(cohort / "dicom" / pid), records)
                return len(cases), 0

            def from_servers(make_source: Callable[[], ImagingSource]) -> Callable[[str], tuple[int, int]]:
                def run(pid: str) -> tuple[int, int]:
                    async def go() -> tuple[int, int]:
                        with tempfile.TemporaryDirectory(prefix="bench-cache-", dir=root) as cache:
                            async with FhirClient(sekmet.url, credentials=fhir_creds) as fhir:
                                got = await fetch_cases(
                                    fhir=fhir, imaging=make_source(), cache=Path(cache), patient_id=pid
                                )
                        return len(got.cases), got.fhir_requests + got.imaging_requests

                    return asyncio.run(go())

                return run

            ways: dict[str, Callable[[str], tuple[int, int]]] = {
                "files": from_files,
                "FHIR + DICOMweb": from_servers(
                    lambda: DicomWebSource(orthanc.dicomweb, credentials=pacs_creds)
                ),
                "FHIR + DIMSE (C-GET)": from_servers(
                    lambda: DimseSource(DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet))
                ),
            }
            print(f"cohort        {len(patients)} patients, seed {args.seed}, {args.repeat} passes each")
            for name, way in ways.items():
                times, requests, cases = [], [], 0
                for _ in range(args.repeat):
                    for pid in patients:
                        start = time.perf_counter()
                        n, r = way(pid)
                        times.append((time.perf_counter() - start) * 1000)
                        requests.append(r / max(n, 1))
                        cases += n
                extra = f"   requests/case {statistics.fmean(requests):5.1f}" if name != "files" else ""
                print(f"{name:22s} per patient: {_ms(times)}{extra}")

            print("\nFHIR requests for one record, by the number of laboratory Observations (_count 200):")
            for n in (10, 500):
                pid = f"bench-obs-{n}"
                asyncio.run(_put_patient(sekmet.url, fhir_creds, pid, n))

                async def fetch(pid: str = pid) -> tuple[int, int, float]:
                    async with FhirClient(sekmet.url, credentials=fhir_creds, page_size=200) as fhir:
                        caps = await fhir.capabilities()
                        start = time.perf_counter()
                        got = await fetch_record(fhir, pid, capabilities=caps)
                        return len(got.record.labs), got.requests, (time.perf_counter() - start) * 1000

                labs, reqs, ms = asyncio.run(fetch())
                print(f"  {n:4d} Observations: {labs:4d} labs read in {reqs:2d} requests, {ms:7.1f} ms")
        finally:
            servers.stop(orthanc.process)
            servers.stop(sekmet.process)

    print(
        f"\nmachine       {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; servers on loopback"
    )
    return 0


async def _put_patient(url: str, credentials: Credentials, pid: str, observations: int) -> None:
    entries: list[dict[str, Any]] = [
        {
            "resource": {"resourceType": "Patient", "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
    ]
    for n in range(observations):
        oid = f"{pid}-{n}"
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": oid,
                    "status": "final",
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
                    "effectiveDateTime": f"2024-01-{1 + n % 28:02d}T08:00:00Z",
                    "valueQuantity": {
                        "value": 80 + n % 40,
                        "unit": "mg/dL",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/dL",
                    },
                },
                "request": {"method": "PUT", "url": f"Observation/{oid}"},
            }
        )
    async with FhirClient(url, credentials=credentials) as fhir:
        await fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})


if __name__ == "__main__":
    raise SystemExit(main())
