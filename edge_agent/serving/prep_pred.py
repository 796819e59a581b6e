"""Prep-pred: preprocessing and prediction as separate processes, chained by the gateway.

``POST /prep-pred/{name}``: the image goes to the prep role, the tensor it
returns goes to model@NAME (both hops in the binary ``tensorwire`` format), and
the gateway post-processes the outputs with the manifest of the version that
answered, mapping boxes back to the caller's pixels with the prep's geometry.
The answer names the version of each side and times each hop.

Each side can be replaced on its own: the gateway asks prep for the spec of the
exact model version model@NAME serves, and model@NAME refuses a tensor prepared
for another version (409), upon which the gateway refreshes and retries once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import Manifest
from edge_agent.runtime.postprocess import postprocess
from edge_agent.services.client import Inferred, Prepped, Services, VersionChanged
from edge_agent.serving.codec import (
    IMAGE_TYPES,
    MAX_FILES,
    form_files,
    json_response,
    loads,
    tensors_from_doc,
)
from edge_agent.serving.deps import gateway
from edge_agent.serving.openapi import errors, multipart_files

logger = logging.getLogger(__name__)
IMAGE_BODY = {
    "required": True,
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": multipart_files("file", MAX_FILES)},
        "application/json": {
            "schema": {
                "type": "object",
                "anyOf": [{"required": ["image_data"]}, {"required": ["images"]}],
                "properties": {
                    "image_data": {"type": "string", "format": "byte"},
                    "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "byte"}},
                },
            }
        },
    },
}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    hub: Services | None = getattr(app.state, "edge_services", None)
    if hub is not None:
        hub.close()
        app.state.edge_services = None


router = APIRouter(tags=["prep-pred"], lifespan=_lifespan)


def services(request: Request) -> Services:
    """The gateway's one client of the prep and model services (made on first use)."""
    state = request.app.state
    hub: Services | None = getattr(state, "edge_services", None)
    if hub is None:
        config = gateway(request).config
        token = config.api_token.get_secret_value() if config.api_token is not None else None
        hub = Services(config.services, token)
        state.edge_services = hub
    return hub


async def _images(request: Request, manifest: Manifest) -> list[bytes]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        files, _ = await form_files(request, "file", max_files=MAX_FILES)
        return [await f.read() for f in files]
    body = await request.body()
    if ctype in (*IMAGE_TYPES, "application/octet-stream"):
        if not body:
            raise InvalidInput("empty body: send the encoded image")
        return [body]
    _, images = tensors_from_doc(loads(body), manifest)
    if images is None:
        raise InvalidInput(
            f"prep-pred takes images; send tensors to /v1/models/{manifest.name}/predict instead"
        )
    return images


async def _chain(
    hub: Services, name: str, images: list[bytes] | None, request: Request, deadline: float
) -> tuple[list[Prepped], Inferred]:
    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    for attempt in (0, 1):
        manifest = await hub.manifest(name, left(), refresh=attempt > 0)
        if images is None:
            images = await _images(request, manifest)
        prepped = await asyncio.gather(*(hub.prep(name, manifest.version, img, left()) for img in images))
        tensors = {
            k: np.concatenate([p.tensors[k] for p in prepped]) if len(prepped) > 1 else prepped[0].tensors[k]
            for k in prepped[0].tensors
        }
        try:
            return list(prepped), await hub.infer(name, tensors, left(), version=manifest.version)
        except VersionChanged as exc:
            if attempt:
                raise
            logger.info("%s; preparing again for the version it serves now", exc.message)
    raise AssertionError("unreachable")  # pragma: no cover


@router.post(
    "/prep-pred/{name}",
    summary="Image -> prep service -> model@NAME service -> answer, with both versions and hop timings",
    openapi_extra={"requestBody": IMAGE_BODY},
    responses=errors(404, 409, 415, 422, 503, 504),
)
async def prep_pred(name: str, request: Request) -> Response:
    gw = gateway(request)
    hub = services(request)
    t0 = time.perf_counter()
    prepped, inferred = await _chain(hub, name, None, request, time.monotonic() + gw.config.request_timeout_s)
    t1 = time.perf_counter()
    results = postprocess(inferred.manifest, inferred.outputs, [g for p in prepped for g in p.geometries])
    t2 = time.perf_counter()
    timings = {
        "prep": max(p.ms for p in prepped),
        "prep_service": max(p.service_ms for p in prepped),
        "infer": inferred.ms,
        "infer_service": inferred.service_ms,
        "postprocess": round((t2 - t1) * 1000.0, 3),
        "total": round((t2 - t0) * 1000.0, 3),
    }
    gw.metrics.observe_stages(
        name,
        {"preprocess": timings["prep"], "infer": timings["infer"], "postprocess": timings["postprocess"]},
    )
    m = inferred.manifest
    body: dict[str, Any] = {
        "model": m.name,
        "version": m.version,
        "results": results,
        "prep": prepped[0].info | {"url": gw.config.services.prep_url},
        "model_service": {"version": m.version, "backend": m.backend, "url": hub.model_url(name)},
        "timings_ms": timings,
    }
    return json_response(body)
