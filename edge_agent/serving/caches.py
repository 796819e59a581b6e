"""Data cache and prediction cache patterns.

Data cache: an image is registered once (``POST /data``, id = sha256 of its
bytes) and predicted on by id; its preprocessed tensor is cached per
(item, preprocessing), so a repeated prediction skips decode and preprocess.
Prediction cache: every predict route answers a repeated question from the
cache (see ``serving/service.py``); here are its statistics and a purge.

``Cache-Control: no-cache`` on a data-item prediction bypasses the prediction
cache (the data cache still serves): how the two are measured apart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.errors import InvalidInput
from edge_agent.serving.codec import b64_image, form_files, json_response, loads
from edge_agent.serving.deps import Gateway, gateway
from edge_agent.serving.openapi import errors, multipart_files

router = APIRouter(tags=["data cache, prediction cache"])

IMAGE_BODY = {
    "required": True,
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": multipart_files("file", 1)},
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image_data"],
                "properties": {"image_data": {"type": "string", "format": "byte"}},
            }
        },
    },
}


async def _image_body(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        files, _ = await form_files(request, "file", max_files=1)
        return await files[0].read()
    body = await request.body()
    if ctype == "application/json":
        doc = loads(body)
        if not isinstance(doc, dict) or "image_data" not in doc:
            raise InvalidInput('expected {"image_data": "<base64 image>"}')
        return b64_image(doc["image_data"], "image_data")
    return body


@router.post(
    "/data",
    status_code=201,
    summary="Register an image (JPEG, PNG, BMP); answers its id, the sha256 of its bytes",
    openapi_extra={"requestBody": IMAGE_BODY},
    responses=errors(422, 503),
)
async def register(request: Request) -> Response:
    gw = gateway(request)
    data = await _image_body(request)
    loop = asyncio.get_running_loop()
    item_id = await loop.run_in_executor(gw.service.executor, gw.service.data.register, data)
    item = await loop.run_in_executor(gw.service.executor, gw.service.data.item, item_id)
    return json_response(item.to_dict(), status=201, headers={"Location": f"/data/{item_id}"})


@router.get(
    "/data/{item_id}", summary="A data item's metadata and the tensors cached for it", responses=errors(404)
)
async def describe(item_id: str, request: Request) -> Response:
    gw = gateway(request)
    item = await asyncio.get_running_loop().run_in_executor(
        gw.service.executor, gw.service.data.item, item_id
    )
    return json_response(item.to_dict())


@router.delete(
    "/data/{item_id}", summary="Delete a data item and its cached tensors", responses=errors(404, 503)
)
async def delete(item_id: str, request: Request) -> Response:
    gw = gateway(request)
    await asyncio.get_running_loop().run_in_executor(gw.service.executor, gw.service.data.delete, item_id)
    return json_response({"id": item_id, "deleted": True})


async def _predict(gw: Gateway, request: Request, name: str, version: str | None, item_id: str) -> Response:
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    pred = await gw.service.predict_data(name, item_id, version, cache=not no_cache)
    body: dict[str, Any] = {
        "model": pred.model,
        "version": pred.version,
        "item": item_id,
        "results": pred.results,
        "timings_ms": pred.timings_ms,
        "cache": pred.cache,
    }
    if request.query_params.get("raw", "").lower() in ("1", "true", "yes"):
        body["outputs"] = pred.outputs
    return json_response(body)


@router.post(
    "/v1/models/{name}/predict/data/{item_id}",
    summary="Predict on a registered data item",
    responses=errors(404, 422, 503),
)
async def predict_item(name: str, item_id: str, request: Request) -> Response:
    return await _predict(gateway(request), request, name, None, item_id)


@router.post(
    "/v1/models/{name}/versions/{version}/predict/data/{item_id}",
    summary="Predict on a registered data item with one version",
    responses=errors(404, 422, 503),
)
async def predict_item_version(name: str, version: str, item_id: str, request: Request) -> Response:
    return await _predict(gateway(request), request, name, version, item_id)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "details": {"type": "object"}},
}
BY_DIGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Hit: the cached answer, as `POST /v1/models/{name}/predict` gives it "
        '(`"cache": {"prediction": "hit"}`)',
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    404: _error(
        "Miss (`code: prediction_not_cached`: send the image to `POST /v1/models/{name}/predict`, "
        "whose answer is then cached), or no such model (`code: model_not_found`)"
    ),
    422: _error(
        "Not 64 lowercase hex digits, or a model that takes tensors (`code: invalid_input`); "
        "a `raw` that is not a boolean (`code: invalid_request`)"
    ),
    503: _error("The model is unloaded or not ready (`code: model_not_ready`)"),
}


@router.get(
    "/v1/models/{name}/predictions/{sha256}",
    summary="The cached answer for an image known by its sha256, without uploading it",
    description="A client that knows the sha256 of its encoded image (a data item's id is that "
    "hash) asks here first: a hit answers without the upload; a miss is a 404 with "
    "`code: prediction_not_cached`, and the client then sends the image to "
    "`POST /v1/models/{name}/predict`. Active version only; `?raw=true` adds the output tensors.",
    responses=BY_DIGEST_RESPONSES,
)
async def by_digest(name: str, sha256: str, request: Request, raw: bool = False) -> Response:
    return answer_by_digest(gateway(request), name, sha256, raw)


def answer_by_digest(gw: Gateway, name: str, sha256: str, raw: bool) -> Response:
    """Also the fast path's entry (edge_agent/serving/fastpath.py) when there is no query string."""
    pred = gw.service.cached_by_digest(name, sha256)
    body: dict[str, Any] = {
        "model": pred.model,
        "version": pred.version,
        "results": pred.results,
        "timings_ms": pred.timings_ms,
        "cache": pred.cache,
    }
    if raw:
        body["outputs"] = pred.outputs
    return json_response(body)


@router.get("/cache", summary="Prediction and data cache: size, bounds, settings")
async def stats(request: Request) -> Response:
    gw = gateway(request)
    return json_response(
        await asyncio.get_running_loop().run_in_executor(gw.service.executor, gw.service.cache_stats)
    )


@router.delete("/cache/prediction", summary="Forget cached predictions (of one model with ?model=NAME)")
async def purge(request: Request, model: str | None = None) -> Response:
    gw = gateway(request)
    cache = gw.service.predictions
    if cache is not None:
        cache.purge(model or None)
        await asyncio.get_running_loop().run_in_executor(gw.service.executor, cache.flush)
    return json_response({"purged": model or "all"})
