"""The prep role: the preprocessing half of the prep-pred pattern, as its own process.

Decode, resize, normalise: an encoded image becomes the model's input tensor,
exactly as the model's manifest says (``runtime.preprocess``, the code the
in-process engine runs). The manifest is read from the store; no model is
loaded and no inference runtime is imported here.

    GET  /health            {"role": "prep", "version", "opencv", "ready", "pid"}
    POST /prep/{model}      body: one encoded image (JPEG, PNG or BMP; any content type,
                            the format is sniffed) or multipart/form-data with image files;
                            ?version=V: use that model version's spec (default: the active one)
                            -> tensor message: {input name: [N, ...]} and meta
                               {"model", "model_version", "input", "geometry": [one per image],
                                "prep": {"version", "opencv", "spec_version"}, "timings_ms"}

``version`` is this service's own release (``PREP_VERSION``), reported on every
answer so the gateway can show which prep produced a tensor; ``spec_version`` is
the manifest's preprocessing version.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import ImagePreprocess, Manifest
from edge_agent.runtime.preprocess import Geometry, preprocess
from edge_agent.runtime.store import ModelStore
from edge_agent.services import tensorwire
from edge_agent.services.model_server import HANDLERS, serve, wrap

logger = logging.getLogger(__name__)
PREP_VERSION = __version__
MAX_FILES = 64
MAX_CACHED_MANIFESTS = 256


class PrepService:
    def __init__(self, store: ModelStore, max_pixels: int) -> None:
        import cv2  # this role's one heavy library: load it now, not on the first request

        self.store = store
        self.max_pixels = max_pixels
        self.opencv = str(cv2.__version__)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prep")
        self._manifests: dict[tuple[str, str], Manifest] = {}

    def info(self, spec_version: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"version": PREP_VERSION, "opencv": self.opencv}
        return out | ({"spec_version": spec_version} if spec_version is not None else {})

    def manifest(self, name: str, version: str | None) -> Manifest:
        """Versions in the store are immutable, so a manifest read once stays right."""
        version = version or self.store.active_version(name)
        key = (name, version)
        if key not in self._manifests:
            if len(self._manifests) >= MAX_CACHED_MANIFESTS:
                self._manifests.clear()
            self._manifests[key] = self.store.manifest(name, version)
        return self._manifests[key]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"role": "prep", "ready": True, "pid": os.getpid()} | self.info())

    async def prep(self, request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["model"]
        m = self.manifest(name, request.query_params.get("version"))
        spec = m.preprocessing
        if spec is None:
            raise InvalidInput(f"{name} takes tensors, not images: it has no image preprocessing", model=name)
        images = await _images(request)
        loop = asyncio.get_running_loop()
        batch, geos = await loop.run_in_executor(self.executor, self._prepare, spec, images)
        meta = {
            "model": name,
            "model_version": m.version,
            "input": spec.input,
            "geometry": [dataclasses.asdict(g) for g in geos],
            "prep": self.info(spec.version),
            "timings_ms": {"prep": round((time.perf_counter() - t0) * 1000.0, 3)},
        }
        return Response(tensorwire.encode({spec.input: batch}, meta), media_type=tensorwire.MEDIA_TYPE)

    def _prepare(self, spec: ImagePreprocess, images: Sequence[bytes]) -> tuple[np.ndarray, list[Geometry]]:
        tensors, geos = [], []
        for i, data in enumerate(images):
            try:
                t, g = preprocess(data, spec, self.max_pixels)
            except InvalidInput as exc:
                if len(images) > 1:
                    exc.message = f"image {i}: {exc.message}"
                    exc.args = (exc.message,)
                raise
            tensors.append(t)
            geos.append(g)
        return np.stack(tensors), geos

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def _images(request: Request) -> list[bytes]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise InvalidInput("multipart body has no file: upload the image as a file field")
        return [await f.read() for f in files]
    body = await request.body()
    if not body:
        raise InvalidInput("empty body: send the encoded image (JPEG, PNG or BMP)")
    return [body]


def create_app(service: PrepService) -> Starlette:
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/prep/{model}", service.prep, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=HANDLERS)


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``prep`` role: ``edge-agent prep [--port P]``."""
    port: int = args.port if args.port is not None else config.services.prep_port
    service = PrepService(ModelStore(config.model_dir, config.store_state_path), config.max_image_pixels)
    logger.info("prep %s (OpenCV %s) on port %d", PREP_VERSION, service.opencv, port)
    try:
        serve(wrap(create_app(service), config), config, port)
    finally:
        service.close()
    return 0
