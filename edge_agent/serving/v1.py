"""Model-addressed API: list and describe models, predict with any of them,
manage versions. Answers carry the version that answered and a per-stage
timing breakdown."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.serving.codec import json_response, read_inputs
from edge_agent.serving.deps import TENSOR_BODY, Gateway, gateway
from edge_agent.serving.openapi import errors

PREDICT = errors(404, 422, 503)

router = APIRouter(prefix="/v1", tags=["models (v1)"])


@router.get("/models", summary="Every model in the store, with readiness")
async def list_models(request: Request) -> Response:
    gw = gateway(request)
    return json_response({"models": [gw.engine.describe(n) for n in gw.engine.store.names()]})


@router.get(
    "/models/{name}",
    summary="One model: versions, inputs, outputs, labels, backend, quantization",
    responses=errors(404),
)
async def describe(name: str, request: Request) -> Response:
    return json_response(gateway(request).engine.describe(name))


async def predict_fast(gw: Gateway, request: Request, name: str) -> Response:
    """The fast path's entry (edge_agent/serving/fastpath.py): active version, no raw outputs."""
    return await _predict(gw, request, name, None, False)


async def _predict(gw: Gateway, request: Request, name: str, version: str | None, raw: bool) -> Response:
    manifest = gw.engine.model(name, version).manifest
    tensors, images = await read_inputs(request, manifest, gw.engine.options.max_rows)
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    pred = await gw.service.predict(name, version, tensors=tensors, images=images, cache=not no_cache)
    body: dict[str, object] = {
        "model": pred.model,
        "version": pred.version,
        "results": pred.results,
        "timings_ms": pred.timings_ms,
        "cache": pred.cache,
    }
    if raw:
        body["outputs"] = pred.outputs
    return json_response(body)


@router.post(
    "/models/{name}/predict",
    summary="Predict with the active version",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=PREDICT,
)
async def predict(name: str, request: Request, raw: bool = False) -> Response:
    return await _predict(gateway(request), request, name, None, raw)


@router.post(
    "/models/{name}/versions/{version}/predict",
    summary="Predict with one version",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=PREDICT,
)
async def predict_version(name: str, version: str, request: Request, raw: bool = False) -> Response:
    return await _predict(gateway(request), request, name, version, raw)


@router.post(
    "/models/{name}/versions/{version}/activate",
    summary="Self-test a version, then make it the serving one (the old one serves on failure)",
    responses=errors(404, 422, 503),
)
async def activate(name: str, version: str, request: Request) -> Response:
    gw = gateway(request)
    report = await asyncio.get_running_loop().run_in_executor(
        gw.service.executor, gw.engine.activate, name, version
    )
    gw.service.forget(name)
    gw.metrics.models_loaded.set(len(gw.engine.loaded()))
    return json_response(
        {
            "model": name,
            "active_version": version,
            "self_test": report.message,
            "max_abs_diff": report.max_abs_diff,
        }
    )


@router.post(
    "/models/{name}/rollback",
    summary="Re-activate the previously active version",
    responses=errors(404, 422, 503),
)
async def rollback(name: str, request: Request) -> Response:
    gw = gateway(request)
    target = await asyncio.get_running_loop().run_in_executor(gw.service.executor, gw.engine.rollback, name)
    gw.service.forget(name)
    return json_response({"model": name, "active_version": target})
