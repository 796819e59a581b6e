"""The model@NAME role: one model served as its own small process.

Inference only: tensors in, tensors out, both in the ``tensorwire`` format. No
image decoding and no post-processing happen here, so the process imports only
the model's backend (never OpenCV, never the other backend) and stays small.
The model is loaded through the engine before the port opens: the store checks
its sha256 and the golden self-test must pass, or the role exits with the error.

    GET  /health     {"model", "version", "backend", "ready", "pid"}
    GET  /metadata   the full manifest of the version served, and runtime details
    POST /infer      tensor message in -> output tensor message out;
                     ?version=V answers 409 version_mismatch unless V is served
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_agent.bootstrap import build_engine
from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError, EdgeAgentError, InvalidInput
from edge_agent.runtime.backends import LoadedModel, get_backend
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.inputs import validate
from edge_agent.services import tensorwire
from edge_agent.services.client import VERSION_MISMATCH
from edge_agent.serving.middleware import BearerAuth, BodyLimit

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 3


class VersionMismatch(EdgeAgentError):
    status = 409
    code = VERSION_MISMATCH


class UnsupportedMediaType(InvalidInput):
    status = 415
    code = "unsupported_media_type"


class ModelService:
    """The loaded model and the three handlers."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.model: LoadedModel = engine.model(name)  # verify + load + golden self-test, or raise
        self.version = self.model.manifest.version
        self.backend = self.model.manifest.backend
        self.runtime_version = get_backend(self.backend).version()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer")

    async def health(self, request: Request) -> Response:
        ready = self.model.ready
        body = {"model": self.name, "version": self.version, "backend": self.backend, "ready": ready}
        return JSONResponse(body | {"pid": os.getpid()}, status_code=200 if ready else 503)

    async def metadata(self, request: Request) -> Response:
        m = self.model.manifest
        return JSONResponse(
            {
                "model": self.name,
                "version": self.version,
                "backend": self.backend,
                "runtime_version": self.runtime_version,
                "runtime": self.model.metadata(),
                "manifest": m.model_dump(mode="json"),
            }
        )

    async def infer(self, request: Request) -> Response:
        t0 = time.perf_counter()
        wanted = request.query_params.get("version")
        if wanted is not None and wanted != self.version:
            raise VersionMismatch(
                f"model@{self.name} serves version {self.version}, not {wanted}",
                served=self.version,
                requested=wanted,
            )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != tensorwire.MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"send input tensors as {tensorwire.MEDIA_TYPE}, not {ctype or 'nothing'}"
            )
        message = tensorwire.decode(await request.body())
        tensors = validate(self.model.manifest, message.tensors, self.engine.options.max_rows)
        t1 = time.perf_counter()
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.executor, self.engine.infer, self.model, tensors)
        t2 = time.perf_counter()
        meta = {
            "model": self.name,
            "version": self.version,
            "timings_ms": {"validate": _ms(t1 - t0), "infer": _ms(t2 - t1)},
        }
        return Response(tensorwire.encode(outputs, meta), media_type=tensorwire.MEDIA_TYPE)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


async def error_response(request: Request, exc: Exception) -> Response:
    """EdgeAgentError -> its status and JSON body; anything else -> 500, logged."""
    if isinstance(exc, EdgeAgentError):
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    logger.exception("%s %s: unexpected error", request.method, request.url.path)
    return JSONResponse(
        {"error": f"internal error: {type(exc).__name__}", "code": "internal"}, status_code=500
    )


HANDLERS: dict[Any, Any] = {EdgeAgentError: error_response, Exception: error_response}


def wrap(app: Starlette, config: AgentConfig) -> Any:
    """The same body limit and bearer-token rule as the gateway (GET /health stays open)."""
    wrapped: Any = BodyLimit(app, max_bytes=config.max_body_bytes)
    if config.api_token is not None:
        wrapped = BearerAuth(wrapped, token=config.api_token.get_secret_value())
    return wrapped


def serve(app: Any, config: AgentConfig, port: int) -> None:
    uvicorn.run(
        app,
        host=config.host,
        port=port,
        log_level=config.log_level.lower(),
        access_log=False,
        http="httptools",
        loop="uvloop",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def create_app(service: ModelService) -> Starlette:
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/metadata", service.metadata, methods=["GET"]),
        Route("/infer", service.infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=HANDLERS)


def resolve_port(config: AgentConfig, name: str, port: int | None) -> int:
    if port is not None:
        return port
    url = config.services.models.get(name)
    found = urlsplit(url).port if url else None
    if found is None:
        raise ConfigError(
            [f"model@{name}: give --port, or a URL with a port in services.models[{name!r}] (got {url!r})"]
        )
    return found


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``model`` role: ``edge-agent model NAME [--port P]``."""
    name: str = args.name
    port = resolve_port(config, name, args.port)
    service = ModelService(build_engine(config), name)
    logger.info("model@%s: serving version %s (%s) on port %d", name, service.version, service.backend, port)
    try:
        serve(wrap(create_app(service), config), config, port)
    finally:
        service.close()
    return 0
