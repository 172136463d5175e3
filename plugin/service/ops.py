"""Operations endpoints: ``/healthz`` (the process answers), ``/readyz`` (model loaded, database
and servers reachable), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from plugin.service.state import ServiceState, get_state

__all__ = ["healthz", "metrics", "readyz", "router"]

router = APIRouter(tags=["operations"])

_PROBE_TIMEOUT_S = 3.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: model loaded, database and configured servers reachable",
    responses={503: {"description": "a part is not ready; the body says which"}},
)
async def readyz(state: ServiceState = Depends(get_state)) -> JSONResponse:
    checks: dict[str, dict[str, Any]] = {}
    info = state.engine.scorer.model_info
    checks["model"] = {"ok": True, "name": info.name, "version": info.version, "sha256": info.sha256}
    checks["database"] = await _probe(lambda: asyncio.to_thread(state.store.ping))
    if state.servers.fhir_url is not None:
        fhir = state.servers.fhir_client()

        async def metadata() -> None:
            try:
                await fhir.capabilities()
            finally:
                await fhir.aclose()

        checks["fhir"] = await _probe(metadata)
    imaging = state.engine.imaging
    if imaging is not None:
        checks["pacs"] = await _probe(
            lambda: asyncio.to_thread(imaging.find_studies, study_instance_uid="1.2.3")
        )
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def _probe(check: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=_PROBE_TIMEOUT_S)
    except (TimeoutError, httpx.HTTPError) as exc:
        return {"ok": False, "error": type(exc).__name__}
    except Exception as exc:  # a probe reports, it never raises
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        return {"ok": False, "error": f"{type(exc).__name__}: {first}"}
    return {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: ServiceState = Depends(get_state)) -> Response:
    return state.metrics.exposition()
