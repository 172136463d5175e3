"""``create_app``: the FastAPI app of ``crosscheck serve``.

Routes: CDS Hooks (``/cds-services``), the REST API (``/v1``), operations
(``/healthz``, ``/readyz``, ``/metrics``), ingest (``/ingest``), and the investigators'
review page (``/review``, behind its own logins: `plugin.review`). The heavy parts
(model, database, ingest poller) are made in the lifespan, so importing and
building the app is cheap and a test can hand in its own parts. Every error is an
OperationOutcome (`plugin.service.outcome`).

Authentication is not optional: the service refuses to be built without an
allow-list of CDS clients unless ``insecure_no_auth`` is set, which logs a loud
warning (and lets REST calls through without a key too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from fusion.scorer import Scorer
from plugin.cds.auth import CdsClientRegistry, CdsTokenVerifier
from plugin.cds.services import StudyPolicy, make_services
from plugin.errors import UsageError
from plugin.servers import ServerSettings
from plugin.service.auth import ApiAuth, load_api_keys
from plugin.service.engine import Engine
from plugin.service.metrics import ServiceMetrics
from plugin.service.outcome import install_error_handlers
from plugin.service.state import ServiceState
from plugin.service.writeback import make_writeback
from plugin.settings import Settings, get_settings
from plugin.store import Store, StoreReplayCache

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _check_auth_settings(settings: Settings) -> None:
    if settings.cds_clients is None and not settings.insecure_no_auth:
        raise UsageError(
            "no CDS client allow-list: give --cds-clients FILE (or CROSSCHECK_CDS_CLIENTS), "
            "or --insecure-no-auth for a test set-up"
        )
    if settings.insecure_no_auth:
        logger.warning(
            "INSECURE: authentication is off (--insecure-no-auth); any caller can read results "
            "and call the hooks. Never run this way with real patient data."
        )


def _build_state(
    settings: Settings,
    servers: ServerSettings,
    metrics: ServiceMetrics,
    scorer: Scorer | None,
    registry: CdsClientRegistry | None,
) -> ServiceState:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if scorer is None:
        from fusion.model.bundle import default_bundle_path, load_bundle

        scorer = Scorer(load_bundle(settings.model or default_bundle_path(), device=settings.device))
    store = Store.open(settings.database)
    api_keys = load_api_keys(settings.api_keys) if settings.api_keys is not None else {}
    api_auth = ApiAuth(
        api_keys=api_keys,
        oauth_issuer=settings.oauth_issuer,
        oauth_jwks_url=settings.oauth_jwks_url,
        oauth_audience=settings.oauth_audience,
        insecure=settings.insecure_no_auth,
    )
    engine = Engine(
        scorer,
        store,
        data_dir=data_dir,
        imaging=servers.imaging_source(),
        endpoint_source=servers.dicomweb_source,
    )
    state = ServiceState(
        settings=settings, servers=servers, engine=engine, store=store, api_auth=api_auth, metrics=metrics
    )
    policy = StudyPolicy(
        count=settings.patient_view_max_studies, max_age=timedelta(days=settings.patient_view_max_age_days)
    )
    state.cds_services = make_services(policy)
    if registry is not None:
        state.cds_verifier = CdsTokenVerifier(registry, StoreReplayCache(store))
    engine.after_score = make_writeback(state)
    return state


def create_app(
    settings: Settings | None = None,
    servers: ServerSettings | None = None,
    *,
    scorer: Scorer | None = None,
) -> FastAPI:
    """The app; ``scorer`` replaces loading the model named in the settings (tests)."""
    settings = settings or get_settings()
    servers = servers or ServerSettings()
    _check_auth_settings(settings)
    registry = CdsClientRegistry.load(settings.cds_clients) if settings.cds_clients is not None else None
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(_build_state, settings, servers, metrics, scorer, registry)
        app.state.service = state
        from plugin.service.ingest import start_ingest

        stop_ingest = await start_ingest(state)
        try:
            yield
        finally:
            await stop_ingest()
            await state.engine.drain()
            state.engine.close()
            state.store.close()

    from plugin import __version__

    app = FastAPI(
        title="imaging-crosscheck",
        version=__version__,
        summary="Is this image consistent with the patient's record? CDS Hooks 2.0 and REST.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.middleware("http")(metrics.middleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            allow_credentials=False,
            max_age=600,
        )
    if settings.trusted_proxies:  # outermost: every part sees the client the proxy forwarded
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    from plugin.service import cds, ingest, ops, rest

    app.include_router(cds.router)
    app.include_router(ops.router)
    app.include_router(rest.router)
    app.include_router(ingest.router)
    from plugin.review import install_review

    install_review(app)
    return app
