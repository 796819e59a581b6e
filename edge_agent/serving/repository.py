"""Model management in the shape of Triton's repository API. Every load goes
through the store's verification and golden self-test; a failed load leaves
the version that was serving in place."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.serving.codec import json_response
from edge_agent.serving.deps import gateway
from edge_agent.serving.openapi import errors

router = APIRouter(prefix="/v2/repository", tags=["model repository"])


@router.post("/index", summary="Every model version in the store and its state")
async def index(request: Request) -> Response:
    engine = gateway(request).engine
    rows = []
    for name in engine.store.names():
        serving = engine.active_version(name)
        for version in engine.store.versions(name):
            ready = engine.is_ready(name, version)
            row: dict[str, object] = {
                "name": name,
                "version": version,
                "state": "READY" if ready else "UNAVAILABLE",
            }
            if version == serving:
                row["serving"] = True
            if not ready and version == engine.store.active_version(name) and name in engine.load_errors:
                row["reason"] = engine.load_errors[name]
            rows.append(row)
    return json_response(rows)


@router.post(
    "/models/{name}/load",
    summary="Load (self-test) the active version of a model",
    responses=errors(404, 422, 503),
)
async def load(name: str, request: Request) -> Response:
    gw = gateway(request)
    version = await asyncio.get_running_loop().run_in_executor(gw.service.executor, gw.engine.load, name)
    gw.service.forget(name)
    gw.metrics.models_loaded.set(len(gw.engine.loaded()))
    return json_response({"model": name, "version": version, "state": "READY"})


@router.post(
    "/models/{name}/unload",
    summary="Unload a model; its requests get 503 until loaded again",
    responses=errors(404),
)
async def unload(name: str, request: Request) -> Response:
    gw = gateway(request)
    gw.engine.unload(name)
    gw.service.forget(name)
    gw.metrics.models_loaded.set(len(gw.engine.loaded()))
    return json_response({"model": name, "state": "UNAVAILABLE"})
