"""Score at ingest, so that hook calls answer from the store.

Three ways a new study reaches the service:

- **Orthanc's change feed** (``orthanc_url`` set): a poller reads ``/changes`` and
  scores each ``StableStudy``. It starts at the feed's end the first time (a sweep,
  not ingest, covers the archive) and keeps its place in ``data_dir`` so a restart
  misses nothing.
- **STOW-RS to the plugin**: ``POST /ingest/studies`` with a ``multipart/related;
  type="application/dicom"`` body, as a modality or router would send to a PACS.
  The instances are kept in the image cache and their studies scored; the answer is
  the STOW-RS response (the instances stored, and failed ones with a reason).
- **FHIR Subscription** (rest-hook): ``POST /ingest/fhir-subscription`` with the
  notification (an ImagingStudy, or a Bundle holding ImagingStudies).

The patient's record comes from the FHIR server (the ImagingStudy with the study's
``urn:oid:`` identifier names its subject); without a FHIR server a study is scored
on its pixels and header alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from connectors.auth import httpx_auth
from connectors.dicom.multipart import split_parts_async
from connectors.domain import PatientRecord
from connectors.fhir.fetch import fetch_record, imaging_study_subjects
from connectors.strictness import Strictness
from plugin.errors import RequestInvalid
from plugin.service.rest import authenticated
from plugin.service.state import ServiceState, get_state
from plugin.store import Actor, AuditAction

__all__ = ["OrthancChangeFeed", "fhir_subscription", "record_for_study", "router", "start_ingest", "stow"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/ingest", tags=["ingest"])

_DICOM_JSON = "application/dicom+json"
_MAX_STOW_BYTES = 2 << 30


async def record_for_study(state: ServiceState, study_instance_uid: str) -> PatientRecord | None:
    """The record of the patient whose ImagingStudy carries this StudyInstanceUID, or None."""
    if state.servers.fhir_url is None:
        return None
    async with state.servers.fhir_client() as fhir:
        subjects = await imaging_study_subjects(fhir, study_instance_uid)
        if len(subjects) != 1:
            logger.debug(
                "study %s: %d ImagingStudy subjects on the FHIR server", study_instance_uid, len(subjects)
            )
            return None
        return (await fetch_record(fhir, subjects.pop(), strictness=Strictness.WARN)).record


def _submit(state: ServiceState, study_instance_uid: str, source: str) -> None:
    """Score an arriving study in the background, with its patient's record when there is one."""

    async def run() -> None:
        try:
            record = await record_for_study(state, study_instance_uid)
        except Exception as exc:  # the record is a bonus: score on the image alone
            logger.warning("no record for an ingested study (%s)", type(exc).__name__)
            record = None
        await state.engine.check_study(study_instance_uid, record=record, source=source, rescore=True)

    state.engine.spawn(run(), "ingest of a study")


# ------------------------------------------------------------------------------------ STOW-RS


class _InstanceFiles:
    """A `PartSink` writing each part of a STOW-RS body to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[Path] = []
        self._current: Any = None
        self.bytes = 0

    def begin(self) -> None:
        self.end()
        self._current = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".dcm", delete=False)

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > _MAX_STOW_BYTES:
            raise RequestInvalid("the STOW-RS body is over 2 GiB; send the study in several requests")
        self._current.write(data)

    def end(self) -> None:
        if self._current is not None:
            self._current.close()
            self.files.append(Path(self._current.name))
            self._current = None


def _file_instances(
    files: list[Path], images: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, sop, sop_class = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except Exception:  # pydicom raises several kinds for a file that is not DICOM
            failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})  # Failure Reason: cannot understand
            continue
        folder = images / study
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / f"{sop}.dcm")
        studies.add(study)
        stored.append(
            {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": [sop]}}
        )
    return stored, failed, studies


@router.post(
    "/studies",
    summary="STOW-RS: store instances with the plugin and score their studies",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        200: {"description": "STOW-RS response (DICOM JSON)", "content": {_DICOM_JSON: {}}},
        400: {"description": "no DICOM instance in the body (OperationOutcome)"},
        409: {"description": "some instances could not be stored (STOW-RS response)"},
    },
)
async def stow(
    request: Request, caller: Actor = Depends(authenticated), state: ServiceState = Depends(get_state)
) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise RequestInvalid('STOW-RS takes multipart/related; type="application/dicom"')
    images = state.engine.data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="stow-", dir=state.engine.data_dir))
    try:
        sink = _InstanceFiles(tmp)
        await split_parts_async(request.stream(), content_type, sink)
        sink.end()
        stored, failed, studies = await asyncio.to_thread(_file_instances, sink.files, images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not stored:
        raise RequestInvalid("the STOW-RS body held no readable DICOM instance")
    for uid in sorted(studies):
        _submit(state, uid, "ingest")
    await state.audit(
        caller, AuditAction.INGEST, detail={"via": "stow-rs", "instances": len(stored), "failed": len(failed)}
    )
    body: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": stored}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    return JSONResponse(body, status_code=409 if failed else 200, media_type=_DICOM_JSON)


# ------------------------------------------------------------------------------ FHIR Subscription


def _study_uids(resource: Any) -> set[str]:
    """StudyInstanceUIDs of the ImagingStudies in a notification (a resource or a Bundle)."""
    if not isinstance(resource, dict):
        return set()
    if resource.get("resourceType") == "Bundle":
        out: set[str] = set()
        for entry in resource.get("entry") or []:
            if isinstance(entry, dict):
                out |= _study_uids(entry.get("resource"))
        return out
    if resource.get("resourceType") != "ImagingStudy":
        return set()
    return {
        str(i.get("value")).removeprefix("urn:oid:")
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and str(i.get("value", "")).startswith("urn:oid:")
    }


@router.post(
    "/fhir-subscription",
    summary="FHIR Subscription rest-hook: score the ImagingStudies notified",
    responses={200: {"description": "the studies queued"}, 400: {"description": "bad notification"}},
)
async def fhir_subscription(
    request: Request, caller: Actor = Depends(authenticated), state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    body = await request.body()
    if not body:  # a handshake or heartbeat without content
        return {"queued": []}
    try:
        notification = json.loads(body)
    except ValueError:
        raise RequestInvalid("the notification is not JSON") from None
    uids = sorted(_study_uids(notification))
    for uid in uids:
        _submit(state, uid, "ingest")
    await state.audit(caller, AuditAction.INGEST, detail={"via": "fhir-subscription", "studies": len(uids)})
    return {"queued": uids}


# ------------------------------------------------------------------------------ Orthanc changes


class OrthancChangeFeed:
    """Polls Orthanc's ``/changes`` for ``StableStudy`` and hands each StudyInstanceUID on."""

    def __init__(
        self,
        base_url: str,
        on_study: Callable[[str], None],
        *,
        auth: httpx.Auth | None,
        position_file: Path,
        poll_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.on_study = on_study
        self.position_file = position_file
        self.poll_s = poll_s
        self._client = httpx.AsyncClient(auth=auth, timeout=10.0)

    def _position(self) -> int | None:
        try:
            return int(self.position_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _save(self, seq: int) -> None:
        tmp = self.position_file.with_suffix(".tmp")
        tmp.write_text(str(seq))
        os.replace(tmp, self.position_file)

    async def poll_once(self) -> int:
        """One round: every new StableStudy handed on; returns how many."""
        since = self._position()
        if since is None:  # first start: from now on
            last = await self._client.get(f"{self.base_url}/changes", params={"last": ""})
            last.raise_for_status()
            self._save(int(last.json().get("Last", 0)))
            return 0
        count = 0
        while True:
            response = await self._client.get(
                f"{self.base_url}/changes", params={"since": since, "limit": 100}
            )
            response.raise_for_status()
            page = response.json()
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableStudy":
                    study = await self._client.get(f"{self.base_url}/studies/{change['ID']}")
                    if study.status_code == 200:
                        uid = study.json().get("MainDicomTags", {}).get("StudyInstanceUID")
                        if uid:
                            self.on_study(str(uid))
                            count += 1
            since = int(page.get("Last", since))
            self._save(since)
            if page.get("Done", True):
                return count

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                logger.warning("Orthanc change feed: %s", type(exc).__name__)
            await asyncio.sleep(self.poll_s)

    async def aclose(self) -> None:
        await self._client.aclose()


async def start_ingest(state: ServiceState) -> Callable[[], Awaitable[None]]:
    """Start the Orthanc poller when configured; returns the coroutine function that stops it."""
    url = state.settings.orthanc_url
    if url is None:

        async def nothing() -> None:
            return None

        return nothing
    feed = OrthancChangeFeed(
        url,
        lambda uid: _submit(state, uid, "ingest"),
        auth=httpx_auth(state.servers.dicomweb_credentials, fhir_base=url),
        position_file=state.engine.data_dir / "orthanc-changes.position",
        poll_s=state.settings.ingest_poll_s,
    )
    task = asyncio.create_task(feed.run())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await feed.aclose()

    return stop
