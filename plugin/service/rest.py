"""The REST decision-support API: ``POST /v1/crosscheck`` and ``GET /v1/results/{id}``.

``POST /v1/crosscheck`` takes either

- ``multipart/form-data``: a part ``bundle`` (a FHIR R4 Bundle, JSON) and one or more
  parts ``dicom`` (DICOM Part 10 files); every study among the files is scored
  against the Bundle's patient record; or
- ``application/json`` references: ``{"patient_id": ..., "study_instance_uid": ...}``
  (either or both) resolved on the FHIR server and PACS the service is configured
  with. A request may name those servers (``fhir_server``, ``dicomweb``) but only
  the configured ones: the service never calls a URL a request chose.

Both answer ``{"results": [...]}``, each a stored result with its id and links;
``GET /v1/results/{id}`` reads one back. Callers authenticate with ``X-API-Key`` or
an OAuth2 bearer token (`plugin.service.auth`); every call is audited.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from connectors import Strictness, link_cases, read_bundle, read_dicom
from connectors.domain import PatientRecord, Study
from connectors.errors import DicomError, FhirBundleInvalid, NoImagingFound, NoInputFound
from connectors.fhir.fetch import fetch_record
from connectors.remote import study_uids_for
from plugin.errors import RequestInvalid, ResultNotFound
from plugin.service.engine import Checked
from plugin.service.state import ServiceState, get_state
from plugin.store import Actor, AuditAction, StoredResult

__all__ = ["CheckResponse", "References", "ResultOut", "authenticated", "crosscheck", "get_result", "router"]

router = APIRouter(prefix="/v1", tags=["decision support"])

_MAX_UPLOAD_FILES = 5000


class References(BaseModel):
    """Which case to check, by reference to the configured servers."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$")
    study_instance_uid: str | None = Field(default=None, min_length=3, max_length=64, pattern=r"^[0-9.]+$")
    fhir_server: str | None = None
    dicomweb: str | None = None
    rescore: bool = False


class ResultOut(BaseModel):
    id: str
    created_at: datetime
    cached: bool = Field(description="answered from the store (scored earlier with this model)")
    url: str
    review_url: str
    result: dict[str, Any] = Field(description="the CrossCheckResult (its JSON Schema is in fusion/schema)")


class CheckResponse(BaseModel):
    results: list[ResultOut]


async def authenticated(
    request: Request,
    x_api_key: str | None = Header(default=None),
    authorization: str | None = Header(default=None),
) -> Actor:
    state = get_state(request)
    return await state.api_auth.authenticate(x_api_key, authorization)


def _out(state: ServiceState, request: Request, stored: StoredResult, cached: bool) -> ResultOut:
    base = state.public_base(request)
    return ResultOut(
        id=stored.id,
        created_at=stored.created_at,
        cached=cached,
        url=f"{base}/v1/results/{stored.id}",
        review_url=state.review_url(request, stored.id),
        result=stored.result.to_json(),
    )


_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["dicom"],
                "properties": {
                    "bundle": {"type": "string", "format": "binary", "description": "FHIR R4 Bundle (JSON)"},
                    "dicom": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary"},
                        "description": "DICOM Part 10 files",
                    },
                },
            }
        },
        "application/json": {"schema": References.model_json_schema()},
    },
}


@router.post(
    "/crosscheck",
    summary="Check studies against the patient's record",
    response_model=CheckResponse,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        400: {"description": "bad input (OperationOutcome)"},
        401: {"description": "no valid API key or bearer token (OperationOutcome)"},
        404: {"description": "no such patient or study (OperationOutcome)"},
        415: {"description": "neither multipart/form-data nor application/json (OperationOutcome)"},
        422: {"description": "input that does not validate (OperationOutcome)"},
        502: {"description": "a server behind the service failed (OperationOutcome)"},
    },
)
async def crosscheck(
    request: Request, caller: Actor = Depends(authenticated), state: ServiceState = Depends(get_state)
) -> CheckResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        checked = await _from_upload(state, request)
    elif content_type in ("application/json", "application/fhir+json"):
        checked = await _from_references(state, await _references(request))
    else:
        raise HTTPException(415, "send multipart/form-data (bundle, dicom files) or application/json")
    for c in checked:
        state.metrics.lookups.labels("hit" if c.cached else "miss").inc()
        if not c.cached:
            state.metrics.observe_result(c.result, "rest")
        await state.audit(
            caller,
            AuditAction.RESULT_CREATE,
            result_id=c.id,
            study_instance_uid=c.result.case.study_instance_uid,
            detail={"cached": c.cached, "via": "rest"},
        )
    return CheckResponse(results=[_out(state, request, c.stored, c.cached) for c in checked])


@router.get(
    "/results/{result_id}",
    summary="A stored result",
    response_model=ResultOut,
    responses={404: {"description": "no such result (OperationOutcome)"}},
)
async def get_result(
    result_id: str,
    request: Request,
    caller: Actor = Depends(authenticated),
    state: ServiceState = Depends(get_state),
) -> ResultOut:
    stored = await asyncio.to_thread(state.store.get_result, result_id)
    await state.audit(
        caller,
        AuditAction.RESULT_READ,
        result_id=result_id if stored else None,
        status=200 if stored else 404,
        detail={} if stored else {"missing": result_id[:64]},
    )
    if stored is None:
        raise ResultNotFound(f"no result {result_id}")
    return _out(state, request, stored, cached=True)


# ---------------------------------------------------------------------------- inputs


async def _references(request: Request) -> References:
    body = await request.body()
    try:
        refs = References.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise RequestInvalid(f"the references are invalid: {problems}") from None
    if refs.patient_id is None and refs.study_instance_uid is None:
        raise RequestInvalid("give patient_id, study_instance_uid, or both")
    return refs


async def _from_references(state: ServiceState, refs: References) -> list[Checked]:
    servers = state.servers
    if refs.fhir_server is not None and refs.fhir_server.rstrip("/") != (servers.fhir_url or "").rstrip("/"):
        raise RequestInvalid("fhir_server is not the FHIR server this service is configured with")
    if refs.dicomweb is not None and refs.dicomweb.rstrip("/") != (servers.dicomweb_url or "").rstrip("/"):
        raise RequestInvalid("dicomweb is not the PACS this service is configured with")
    record: PatientRecord | None = None
    if refs.patient_id is not None and servers.fhir_url is not None:
        async with servers.fhir_client() as fhir:
            record = (await fetch_record(fhir, refs.patient_id, strictness=Strictness.WARN)).record
    if refs.study_instance_uid is not None:
        uids = [refs.study_instance_uid]
    elif record is not None:
        uids = sorted({s.study_instance_uid for s in record.imaging_studies if s.study_instance_uid})
        if state.engine.imaging is not None:
            on_pacs = await asyncio.to_thread(study_uids_for, state.engine.imaging, record, None, None)
            uids = sorted(set(uids) | set(on_pacs))
    else:
        imaging = state.engine.imaging
        if imaging is None:
            raise NoImagingFound("no FHIR server and no PACS configured to find the patient's studies")
        uids = await asyncio.to_thread(study_uids_for, imaging, None, refs.patient_id, None)
    if not uids:
        raise NoImagingFound(f"no imaging study found for Patient/{refs.patient_id}")
    checked = []
    for uid in uids:
        found = await state.engine.check_study(uid, record=record, source="rest", rescore=refs.rescore)
        assert found is not None  # no deadline: check_study waits for the result
        checked.append(found)
    return checked


async def _from_upload(state: ServiceState, request: Request) -> list[Checked]:
    form = await request.form(max_files=_MAX_UPLOAD_FILES, max_fields=16)
    try:
        unknown = sorted(set(form.keys()) - {"bundle", "dicom"})
        if unknown:
            raise RequestInvalid(f"unknown form part(s) {', '.join(unknown)}: send 'bundle' and 'dicom'")
        dicom_parts = [p for p in form.getlist("dicom") if isinstance(p, UploadFile)]
        if not dicom_parts:
            raise RequestInvalid("no DICOM files: send them as 'dicom' file parts")
        bundles = [p for p in form.getlist("bundle") if isinstance(p, UploadFile)]
        if len(bundles) > 1:
            raise RequestInvalid("send at most one 'bundle' part")
        uploads = state.engine.data_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=uploads))
        try:
            (folder / "dicom").mkdir()
            for i, part in enumerate(dicom_parts):
                await asyncio.to_thread(
                    _save, part, folder / "dicom" / f"{i:05d}-{_safe_name(part.filename)}"
                )
            records: list[PatientRecord] = []
            try:
                if bundles:
                    await asyncio.to_thread(_save, bundles[0], folder / "bundle.json")
                    records = await asyncio.to_thread(_read_bundle, folder / "bundle.json")
                studies = await asyncio.to_thread(read_dicom, folder / "dicom", strictness=Strictness.RAISE)
            except (DicomError, FhirBundleInvalid, NoInputFound) as exc:
                # the same error, naming the part as the caller sent it rather than our folder
                raise type(exc)(str(exc).replace(f"{folder}/dicom/", "").replace(f"{folder}/", "")) from None
            if not studies:
                raise NoInputFound("the DICOM parts hold no study")
            kept = [await asyncio.to_thread(state.engine.evidence.keep_study, s) for s in studies]
            studies = [s for path in kept for s in await asyncio.to_thread(_read_kept, path)]
            cases = link_cases(studies, records)
            return await state.engine.score_cases(
                cases, source="rest", inputs={"upload": uuid.uuid4().hex, "files": str(len(dicom_parts))}
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        await form.close()


def _read_kept(folder: Path) -> list[Study]:
    return read_dicom(folder, strictness=Strictness.RAISE)


def _safe_name(filename: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "part").name)[:80].lstrip(".")
    return name or "part"


def _save(part: UploadFile, path: Path) -> None:
    part.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(part.file, out, length=1 << 20)


def _read_bundle(path: Path) -> list[PatientRecord]:
    try:
        json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"the 'bundle' part is not JSON: {exc}") from None
    return read_bundle(path, strictness=Strictness.RAISE)
