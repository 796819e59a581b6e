"""The cloud API application: the routers in one table, the login gate, the body limit, the error handlers."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from cloud_sync import __version__, dashboard, rollout
from cloud_sync.api import commands, deployments, devices, downloads, models, results, rollouts
from cloud_sync.api.deps import Cloud, Row
from cloud_sync.api.downloads import PUBLIC_PREFIXES
from cloud_sync.config import CloudConfig
from cloud_sync.errors import CloudSyncError
from cloud_sync.mqtt import MqttLink, broker_options
from cloud_sync.store import Store
from edge_agent.serving.middleware import BodyLimit
from edge_agent.serving.openapi import allowed_methods, finish_schema

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PATHS = frozenset({"/health"})
# In this order: it is the order of the paths in the OpenAPI document.
ROUTERS = (devices, results, commands, models, deployments, rollouts, downloads)


def create_app(config: CloudConfig, *, store: Store | None = None, link: MqttLink | None = None) -> FastAPI:
    store = store or Store(config.db_target, pool_size=config.db_pool_size)
    link = link or MqttLink(broker_options(config), f"cloud-api-{socket.gethostname()[:40]}-{os.getpid()}")
    cloud = Cloud(config, store, link)
    feed: dashboard.Feed | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cloud.link.start(wait_s=None)  # connects (and reconnects) in the background
        driver = rollout.RolloutDriver(cloud.rollouts)
        driver.start()
        logger.info("cloud API ready (database %s)", cloud.store.where)
        yield
        driver.stop()
        if feed is not None:
            await feed.close()
        cloud.link.close()
        cloud.store.close()

    app = FastAPI(
        title="cloud-sync API",
        version=__version__,
        lifespan=lifespan,
        description="Fleet state, results and commands of the edge inference agents.",
    )
    app.state.cloud = cloud

    @app.get("/health", tags=["operations"], summary="Liveness; no token needed")
    def health() -> Row:
        return {
            "status": "ok",
            "broker_connected": cloud.link.connected,
            "schema": cloud.store.schema_version,
        }

    for module in ROUTERS:
        app.include_router(module.router)
    feed = dashboard.mount(app, config, store, link)
    app.openapi = finish_schema(  # type: ignore[method-assign]
        app.openapi,
        public=lambda path: dashboard.is_public(path, PUBLIC_PATHS, PUBLIC_PREFIXES),
        bearer=config.api_token is not None,
        cookie=dashboard.COOKIE if config.api_token or config.dashboard_user else None,
    )
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, hint="the cloud API takes bodies up to 1 MiB")
    app.middleware("http")(_gate)
    if config.trusted_proxies:  # outermost: the gate and the cookies see the client's scheme and address
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[str(n) for n in config.trusted_proxies])
    return app


async def _gate(request: Request, call_next: Any) -> Response:
    """Login (token or session + CSRF), checked before any parsing (no 422 leaks); the body limit
    (:class:`edge_agent.serving.middleware.BodyLimit`) runs next, before the body is parsed."""
    refused = await dashboard.refuse(request, PUBLIC_PATHS, PUBLIC_PREFIXES)
    if refused is not None and not _unserved_method(request):
        return refused
    response: Response = await call_next(request)
    return response


def _unserved_method(request: Request) -> bool:
    """A method the path does not serve: routing answers 405 (with Allow) before any login is asked."""
    methods = allowed_methods(request.app.openapi(), request.url.path)
    return bool(methods) and request.method not in methods


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudSyncError)
    async def cloud_error(request: Request, exc: CloudSyncError) -> Response:
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "; ".join(problems), "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names only the first route's methods
            methods = allowed_methods(app.openapi(), request.url.path)
            headers = {"Allow": ", ".join(methods)} if methods else headers
        return _error(exc.status_code, str(exc.detail), "http_error", headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s: unexpected error", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}", "internal")


def serve(config: CloudConfig) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=config.api_host,
        port=config.api_port,
        log_level=config.log_level.lower(),
        access_log=config.log_level == "DEBUG",
        proxy_headers=False,  # X-Forwarded-* are honoured from trusted_proxies only (create_app)
        timeout_graceful_shutdown=3,  # open event streams (dashboard) never end on their own
    )
