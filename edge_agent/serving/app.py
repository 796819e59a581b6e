"""The gateway application: routers, middleware, error translation, metrics.

``create_app(config)`` builds everything; ``app_from_env`` is the factory
uvicorn calls in each worker process when ``--workers N`` > 1.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from edge_agent import __version__
from edge_agent.bootstrap import build_engine, open_storage
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import EdgeAgentError
from edge_agent.retention import DAY_S, Pruner
from edge_agent.runtime.engine import Engine
from edge_agent.serving import (
    asyncjobs,
    batch,
    book,
    caches,
    heap,
    microservice,
    prep_pred,
    repository,
    v1,
    v2,
)
from edge_agent.serving.codec import json_response
from edge_agent.serving.deps import Gateway, gateway
from edge_agent.serving.fastpath import FastPath, GatewayApp
from edge_agent.serving.metrics import Metrics
from edge_agent.serving.middleware import PUBLIC_PATHS, BearerAuth, BodyLimit, CountRequests
from edge_agent.serving.openapi import allowed_methods, finish_schema
from edge_agent.serving.service import InferenceService

logger = logging.getLogger(__name__)

ROUTERS = (
    book.router,
    v1.router,
    v2.router,
    repository.router,
    asyncjobs.router,
    batch.router,
    caches.router,
    prep_pred.router,
    microservice.router,
)


# FastAPI's built-in OpenTelemetry hook asks the global providers on every request (~5 us);
# the gateway's metrics are its own Prometheus registry. (Versions without the hook: nothing.)
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(config: AgentConfig, engine: Engine | None = None) -> FastAPI:
    engine = engine or build_engine(config)
    metrics = Metrics()
    storage = open_storage(config)
    metrics.watch_disk(storage.disk)
    gw = Gateway(config, engine, InferenceService(engine, config, metrics, storage), metrics, storage)

    retention_days = config.storage.retention_days

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw.service.start()
        pruner = Pruner(open_storage(config), None if retention_days is None else retention_days * DAY_S)
        pruner.start()
        if config.preload:
            results = await asyncio.get_running_loop().run_in_executor(gw.service.executor, engine.load_all)
            for name, err in results.items():
                if err:
                    logger.error("model %s is not serving: %s", name, err)
        metrics.models_loaded.set(len(engine.loaded()))
        heap.settle()  # what is loaded now is never garbage: the collector stops walking it
        gw.ready = True
        logger.info("gateway ready: %d model versions loaded", len(engine.loaded()))
        yield
        gw.ready = False
        pruner.stop()
        gw.service.close()

    app = GatewayApp(
        title="edge-agent gateway",
        version=__version__,
        lifespan=lifespan,
        description="Local HTTP API of the edge inference agent.",
        **_NO_TELEMETRY,
    )
    app.state.gateway = gw
    for router in ROUTERS:
        app.include_router(router)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (text exposition format 0.0.4)",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint(request: Request) -> Response:
        return Response(gateway(request).metrics.render(), media_type="text/plain; version=0.0.4")

    app.openapi = finish_schema(  # type: ignore[method-assign]
        app.openapi, public=PUBLIC_PATHS.__contains__, bearer=config.api_token is not None
    )

    _install_error_handlers(app, metrics)
    token = None if config.api_token is None else config.api_token.get_secret_value()
    app.fast_path = FastPath(gw, config.max_body_bytes, token)  # checks what the middleware would
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.api_token is not None:
        app.add_middleware(BearerAuth, token=config.api_token.get_secret_value())
    app.add_middleware(CountRequests, metrics=metrics)
    return app


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def failure(request: Request, code: str) -> None:
        route = request.scope.get("route")
        metrics.failures.labels(
            request.path_params.get("name", ""), getattr(route, "path", "unmatched"), code
        ).inc()

    @app.exception_handler(EdgeAgentError)
    async def agent_error(request: Request, exc: EdgeAgentError) -> Response:
        failure(request, exc.code)
        status = exc.status if exc.status < 500 or exc.status in (503, 504, 507) else 500
        if status == 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return json_response(exc.to_dict(), status=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        failure(request, "invalid_request")
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return json_response({"error": "; ".join(problems), "code": "invalid_request"}, status=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names only the first route's methods
            methods = allowed_methods(app.openapi(), request.url.path)
            headers = {"Allow": ", ".join(methods)} if methods else headers
        return json_response(
            {"error": str(exc.detail), "code": "http_error"}, status=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        failure(request, "internal")
        logger.exception("%s %s: unexpected error", request.method, request.url.path)
        return json_response(
            {"error": f"internal error: {type(exc).__name__}", "code": "internal"}, status=500
        )


def app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker mode: config from EDGE_* variables."""
    return create_app(load_config())
