"""``crosscheck load``: push a cohort folder into a FHIR server (transactions) and a PACS (STOW-RS).

For demos and tests: afterwards ``crosscheck check --fhir ... --dicomweb ...`` sees
the same cases as ``crosscheck check --bundle ... --dicom ...`` on the folder.
With ``--link-endpoint URL`` an Endpoint resource for the DICOMweb URL is added and every
ImagingStudy points at it, so a check needs only the FHIR server to find the images.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from connectors.errors import FhirBundleInvalid, NoInputFound
from plugin.errors import UsageError
from plugin.servers import ServerSettings

__all__ = ["ENDPOINT_ID", "LoadReport", "endpoint_resource", "link_endpoint", "run_load"]

logger = logging.getLogger(__name__)

ENDPOINT_ID = "crosscheck-dicomweb"


@dataclass(frozen=True)
class LoadReport:
    bundles: int
    resources: int
    instances: int


def endpoint_resource(dicomweb_url: str) -> dict[str, Any]:
    """An R4 Endpoint for a DICOMweb (WADO-RS) base URL."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "DICOM"}
                ]
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": dicomweb_url.rstrip("/"),
    }


def link_endpoint(bundle: dict[str, Any], dicomweb_url: str) -> dict[str, Any]:
    """A copy of a transaction Bundle with the Endpoint added and every ImagingStudy pointing at it."""
    bundle = copy.deepcopy(bundle)
    entries = bundle.setdefault("entry", [])
    for entry in entries:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "ImagingStudy":
            resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}]
    entries.insert(
        0,
        {
            "fullUrl": f"Endpoint/{ENDPOINT_ID}",
            "resource": endpoint_resource(dicomweb_url),
            "request": {"method": "PUT", "url": f"Endpoint/{ENDPOINT_ID}"},
        },
    )
    return bundle


def run_load(
    *, settings: ServerSettings, data: Path, endpoint: str | None = None, progress: bool = True
) -> LoadReport:
    """Load every Bundle under ``data/bundles`` and every DICOM file under ``data/dicom``.

    With ``endpoint`` (a DICOMweb base URL) the Bundles get an Endpoint with that
    address and every ImagingStudy points at it.
    """
    if settings.fhir_url is None and settings.dicomweb_url is None:
        raise UsageError("nothing to load into: give --fhir URL and/or --dicomweb URL")
    if endpoint is not None and settings.fhir_url is None:
        raise UsageError("--link-endpoint needs --fhir URL")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UsageError("--link-endpoint takes the DICOMweb base URL (http:// or https://)")
    bundle_files = sorted((data / "bundles").glob("*.json"))
    dicom_files = sorted(p for p in (data / "dicom").rglob("*") if p.is_file())
    if not bundle_files and not dicom_files:
        raise NoInputFound(f"{data}: no bundles/*.json and no dicom/ files; is this a cohort folder?")
    bundles = resources = 0
    if settings.fhir_url is not None and bundle_files:
        bundles, resources = asyncio.run(_load_bundles(settings, bundle_files, endpoint, progress))
    instances = 0
    if settings.dicomweb_url is not None and dicom_files:
        with settings.dicomweb_source(settings.dicomweb_url) as pacs:
            batch = 16
            with tqdm(total=len(dicom_files), desc="STOW-RS", unit="file", disable=not progress) as bar:
                for start in range(0, len(dicom_files), batch):
                    chunk = dicom_files[start : start + batch]
                    instances += pacs.store(chunk, batch=batch)
                    bar.update(len(chunk))
    return LoadReport(bundles=bundles, resources=resources, instances=instances)


async def _load_bundles(
    settings: ServerSettings, files: list[Path], endpoint: str | None, progress: bool
) -> tuple[int, int]:
    resources = 0
    async with settings.fhir_client() as fhir:
        await fhir.capabilities()
        for file in tqdm(files, desc="FHIR transactions", unit="bundle", disable=not progress):
            bundle = _read_bundle(file)
            if endpoint is not None:
                bundle = link_endpoint(bundle, endpoint)
            await fhir.transaction(bundle)
            resources += len(bundle.get("entry") or ())
            logger.debug("loaded %s", file.name)
    return len(files), resources


def _read_bundle(file: Path) -> dict[str, Any]:
    try:
        bundle = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhirBundleInvalid(f"{file}: not a readable JSON Bundle ({exc.__class__.__name__})") from None
    if (
        not isinstance(bundle, dict)
        or bundle.get("resourceType") != "Bundle"
        or bundle.get("type") != "transaction"
    ):
        raise FhirBundleInvalid(f"{file}: not a transaction Bundle")
    return bundle
