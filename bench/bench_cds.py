"""Latency of CDS Hooks ``patient-view`` calls for a DX study: answered from the store, and on demand.

Usage: ``python bench/bench_cds.py [--patients N] [--seed S] [--repeat R]``.

Starts a real Orthanc on loopback (as the integration tests do) holding a simulated
cohort's images, and the service (uvicorn, one process, the shipped model on the CPU)
with Orthanc as its PACS. A simulated CDS client signs an ES384 JWT for every call and
sends the full prefetch the discovery document asks for (the patient's record, as an
EHR would), as real HTTP requests. For each patient whose most recent study is a chest
radiograph (DX):

- **on demand**: the first call, when nothing is stored: JWT check, prefetch parsed
  into the record, the study fetched from Orthanc over DICOMweb, scored, stored, cards;
- **stored**: ``--repeat`` further calls, answered from the store (as after ingest).

Targets (issue 5, two cores): p95 <= 100 ms stored, <= 500 ms on demand. Prints p50,
p95 and p99 in milliseconds and the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from connectors.auth import Credentials
from fusion.model.bundle import default_bundle_path, load_bundle
from fusion.scorer import Scorer
from plugin.cli import main as crosscheck
from plugin.servers import ServerSettings
from plugin.service.app import create_app
from plugin.service.background import serve_in_background
from plugin.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "imaging-crosscheck-patient-view"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _prefetch(bundle: dict[str, Any]) -> dict[str, Any]:
    conftest = _load("bench_service_conftest_helpers", ROOT / "tests" / "plugin" / "service" / "prefetch.py")
    return conftest.prefetch_from_bundle(bundle)  # type: ignore[no-any-return]


def _percentiles(samples: list[float]) -> str:
    p50, p95, p99 = np.percentile(np.asarray(samples), [50, 95, 99])
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   p99 {p99:7.1f} ms   (n={len(samples)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patients", type=int, default=40, help="patients to simulate (those with a DX study count)"
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10, help="stored calls per patient")
    args = parser.parse_args(argv)
    servers_module = _load("servers", ROOT / "tests" / "integration" / "servers.py")
    cds_client_module = _load("bench_cds_client", ROOT / "tests" / "plugin" / "cds" / "cds_client.py")

    with tempfile.TemporaryDirectory(prefix="bench-cds-") as tmp:
        root = Path(tmp)
        orthanc = servers_module.start_orthanc(root / "orthanc")
        try:
            cohort = root / "cohort"
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
                        "--manipulated-rate",
                        "0.1",
                        "-q",
                    ]
                )
                == 0
            )
            os.environ["CROSSCHECK_DICOMWEB_USER"], os.environ["CROSSCHECK_DICOMWEB_PASSWORD"] = orthanc.user
            assert crosscheck(["load", str(cohort), "--dicomweb", orthanc.dicomweb, "-q"]) == 0
            manifest = json.loads((cohort / "manifest.json").read_text())
            latest: dict[str, dict[str, Any]] = {}
            for case in manifest["cases"]:
                bundle = json.loads((cohort / case["bundle"]).read_text())
                studies = sorted(
                    (
                        e["resource"]
                        for e in bundle["entry"]
                        if e["resource"]["resourceType"] == "ImagingStudy"
                    ),
                    key=lambda r: r.get("started", ""),
                )
                uid = next(i["value"] for i in studies[-1]["identifier"]).removeprefix("urn:oid:")
                if uid == case["study_instance_uid"] and case["kind"] == "chest-dx":
                    latest[case["patient_id"]] = {"bundle": bundle, "uid": uid}
            client = cds_client_module.SimulatedCdsClient("https://ehr.bench.example")
            clients_file = root / "clients.json"
            clients_file.write_text(json.dumps(client.allow_list()))
            settings = Settings(
                data_dir=root / "data",
                cds_clients=clients_file,
                cds_deadline_ms=30_000,  # measure the whole on-demand path, not the deadline
                patient_view_max_studies=1,
                patient_view_max_age_days=36500.0,
            )
            servers = ServerSettings(
                dicomweb_url=orthanc.dicomweb,
                dicomweb_credentials=Credentials(username=orthanc.user[0], password=orthanc.user[1]),
            )
            scorer = Scorer(load_bundle(default_bundle_path(), device="cpu"))
            on_demand: list[float] = []
            stored: list[float] = []
            with (
                serve_in_background(create_app(settings, servers, scorer=scorer)) as url,
                httpx.Client(timeout=60) as http,
            ):
                endpoint = f"{url}/cds-services/{SERVICE}"
                for pid, item in latest.items():
                    body = {
                        "hook": "patient-view",
                        "context": {"userId": "Practitioner/bench", "patientId": pid},
                        "prefetch": _prefetch(item["bundle"]),
                    }
                    for i in range(1 + args.repeat):
                        body["hookInstance"] = str(uuid.uuid4())
                        headers = {"Authorization": client.authorization(endpoint)}
                        t0 = time.perf_counter()
                        response = http.post(endpoint, json=body, headers=headers)
                        ms = (time.perf_counter() - t0) * 1000
                        if response.status_code != 200:
                            raise SystemExit(
                                f"patient-view answered {response.status_code}: {response.text[:300]}"
                            )
                        (on_demand if i == 0 else stored).append(ms)
        finally:
            servers_module.stop(orthanc.process)

    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"patient-view calls for a DX study ({len(latest)} patients, full prefetch, ES384 JWT, real HTTP):")
    print(f"  stored     {_percentiles(stored)}   target p95 <= 100 ms")
    print(f"  on demand  {_percentiles(on_demand)}   target p95 <= 500 ms")
    print(f"  mean on demand {statistics.fmean(on_demand):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
