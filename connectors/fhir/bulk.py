"""FHIR Bulk Data export (``$export``): kick off, poll, download the NDJSON files.

    async with FhirClient(url, credentials=...) as fhir:
        export = await bulk_export(fhir, Path("export"), types=("Patient", "Observation"))
    records = read_ndjson(Path("export"))

Follows the Bulk Data Access IG (https://hl7.org/fhir/uv/bulkdata/export.html):
``GET [base]/$export`` (or ``Patient/$export``, ``Group/[id]/$export``) with
``Prefer: respond-async``; ``202`` and a ``Content-Location`` status URL; polling
that URL, waiting as its ``Retry-After`` says (capped), until ``200`` and the
manifest; then each output file is streamed to disk. Status and file URLs are
only followed on the server the export started on, with its credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from connectors.errors import RequestRejected, ServerFailed, ServerTimeout
from connectors.fhir.rest import FHIR_JSON, FhirClient
from connectors.http import redact_url, retry_after_seconds

__all__ = ["BulkExport", "bulk_export"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkExport:
    """A finished export: the files written, per resource type, and the server's error files."""

    files: tuple[Path, ...]
    counts: dict[str, int]
    errors: tuple[Path, ...]
    transaction_time: str | None


async def bulk_export(
    client: FhirClient,
    dest: Path,
    *,
    level: str = "system",
    group_id: str | None = None,
    types: Sequence[str] = (),
    since: datetime | None = None,
    max_wait: float = 3600.0,
    max_poll_interval: float = 30.0,
) -> BulkExport:
    """Run one ``$export`` to completion and write its NDJSON files into ``dest``.

    ``level``: ``system``, ``patient`` (all patients) or ``group`` (``group_id``).
    `ServerTimeout` when the export is not done within ``max_wait`` seconds (it
    is cancelled on the server); `ServerFailed` when the server reports failure.
    """
    if level == "system":
        path = "$export"
    elif level == "patient":
        path = "Patient/$export"
    elif level == "group":
        if not group_id:
            raise ValueError("a group-level export needs the Group id")
        path = f"Group/{group_id}/$export"
    else:
        raise ValueError(f"export level must be system, patient or group, not {level!r}")
    params: dict[str, str] = {"_outputFormat": "application/fhir+ndjson"}
    if types:
        params["_type"] = ",".join(types)
    if since is not None:
        params["_since"] = since.isoformat()
    kickoff = await client.request(
        "GET",
        f"{client.base_url}/{path}",
        what="FHIR $export kick-off",
        params=params,
        headers={"Prefer": "respond-async", "Accept": FHIR_JSON},
    )
    status_url = kickoff.headers.get("Content-Location")
    if kickoff.status_code != 202 or not status_url:
        raise RequestRejected(
            f"the server did not start an asynchronous export (HTTP {kickoff.status_code}, "
            f"{'no' if not status_url else 'a'} Content-Location); does it support $export?",
            url=f"{client.safe_url}/{path}",
            status=kickoff.status_code,
        )
    status_url = client.same_server(status_url)
    manifest = await _poll(client, status_url, max_wait=max_wait, max_interval=max_poll_interval)
    dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    errors: list[Path] = []
    counts: dict[str, int] = {}
    for kind, items in (("output", manifest.get("output") or ()), ("error", manifest.get("error") or ())):
        for n, item in enumerate(items):
            rtype, url = str(item.get("type") or "Resource"), item.get("url")
            if not isinstance(url, str):
                continue
            name = f"{rtype}.{n:03d}.ndjson" if kind == "output" else f"error.{rtype}.{n:03d}.ndjson"
            target = dest / name
            await _download(client, client.same_server(url), target)
            if kind == "output":
                files.append(target)
                counts[rtype] = counts.get(rtype, 0) + int(item.get("count") or 0)
            else:
                errors.append(target)
    if errors:
        logger.warning("the export reported %d error file(s); see %s", len(errors), dest)
    return BulkExport(tuple(files), counts, tuple(errors), manifest.get("transactionTime"))


async def _poll(
    client: FhirClient, status_url: str, *, max_wait: float, max_interval: float
) -> dict[str, Any]:
    deadline = time.monotonic() + max_wait
    while True:
        response = await client.request(
            "GET", status_url, what="FHIR $export status", headers={"Accept": FHIR_JSON}
        )
        if response.status_code == 200:
            try:
                manifest = response.json()
            except ValueError:
                raise ServerFailed("the $export manifest is not JSON", url=redact_url(status_url)) from None
            if not isinstance(manifest, dict):
                raise ServerFailed("the $export manifest is not a JSON object", url=redact_url(status_url))
            return manifest
        if response.status_code != 202:
            raise ServerFailed(
                f"unexpected HTTP {response.status_code} while polling the $export status",
                url=redact_url(status_url),
                status=response.status_code,
            )
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        wait = min(wait if wait is not None else 1.0, max_interval)
        if time.monotonic() + wait > deadline:
            await _cancel(client, status_url)
            raise ServerTimeout(
                f"the $export did not finish within {max_wait:.0f} s; cancelled", url=redact_url(status_url)
            )
        logger.debug(
            "$export in progress (%s); polling again in %.1f s", response.headers.get("X-Progress"), wait
        )
        await asyncio.sleep(wait)


async def _download(client: FhirClient, url: str, target: Path) -> None:
    response = await client.request(
        "GET", url, what="FHIR $export file", headers={"Accept": "application/fhir+ndjson"}, stream=True
    )
    part = target.with_name(target.name + ".part")
    try:
        with part.open("wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
        part.replace(target)
    except httpx.HTTPError as exc:
        raise ServerFailed(
            f"the $export file download broke off ({exc.__class__.__name__})", url=redact_url(url)
        ) from None
    finally:
        await response.aclose()
        part.unlink(missing_ok=True)


async def _cancel(client: FhirClient, status_url: str) -> None:
    try:
        await client.request("DELETE", status_url, what="FHIR $export cancel")
    except Exception as exc:  # cancelling is a courtesy; the timeout is the error to report
        logger.debug("could not cancel the export: %s", exc.__class__.__name__)
