"""What a running service holds: settings, servers, the engine, the store, auth and metrics.

Built once in the app's lifespan (`plugin.service.app`) and reached by routes
through `get_state`; tests build the app with their own parts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import Request

from plugin.cds.auth import CdsTokenVerifier
from plugin.cds.services import SERVICES, CdsService
from plugin.servers import ServerSettings
from plugin.service.auth import ApiAuth
from plugin.service.engine import Engine
from plugin.service.metrics import ServiceMetrics
from plugin.settings import Settings
from plugin.store import Actor, AuditAction, Store

__all__ = ["ServiceState", "get_state"]

logger = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    servers: ServerSettings
    engine: Engine
    store: Store
    api_auth: ApiAuth
    metrics: ServiceMetrics
    cds_services: Mapping[str, CdsService] = field(default_factory=lambda: dict(SERVICES))
    cds_verifier: CdsTokenVerifier | None = None  # None: --insecure-no-auth, CDS calls are anonymous
    #: parts an area makes on first use (the review page's)
    extras: dict[str, Any] = field(default_factory=dict)

    def public_base(self, request: Request) -> str:
        """The URL clients reach the service at: the configured one, else the request's own."""
        if self.settings.public_url:
            return self.settings.public_url
        return str(request.base_url).rstrip("/")

    def review_url(self, request: Request, result_id: str) -> str:
        return f"{self.public_base(request)}/review/results/{result_id}"

    async def audit(
        self,
        caller: Actor,
        action: AuditAction | str,
        *,
        result_id: str | None = None,
        study_instance_uid: str | None = None,
        status: int = 200,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """One audit record (caller, action, what, model version, status); ids only, no patient data."""
        info = self.engine.scorer.model_info
        try:
            await asyncio.to_thread(
                partial(
                    self.store.audit,
                    action,
                    caller,
                    result_id=result_id,
                    study_instance_uid=study_instance_uid,
                    model_version=f"{info.name} {info.version}",
                    outcome="ok" if status < 400 else "refused",
                    status_code=status,
                    detail=dict(detail or {}),
                )
            )
        except Exception as exc:  # the audit trail failing is logged loudly, the answer still goes out
            logger.error("audit record for %s not written (%s)", action, type(exc).__name__)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
