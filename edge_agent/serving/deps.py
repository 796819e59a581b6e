"""Shared request-scoped helpers for the routers."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from edge_agent.config import AgentConfig
from edge_agent.runtime.engine import Engine
from edge_agent.serving.codec import MAX_FILES
from edge_agent.serving.metrics import Metrics
from edge_agent.serving.openapi import multipart_files
from edge_agent.serving.service import InferenceService
from edge_agent.storage import Storage


@dataclass(slots=True)
class Gateway:
    config: AgentConfig
    engine: Engine
    service: InferenceService
    metrics: Metrics
    storage: Storage
    ready: bool = False


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


# Request-body schemas for the OpenAPI document. Bodies are parsed by hand on
# the hot path (orjson, numpy), so these only describe them to clients and fuzzers.
TENSOR_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "One of: data (rows of the single input), inputs (by name), "
                "image_data or images (base64 JPEG/PNG/BMP, image models)",
                "anyOf": [{"required": [k]} for k in ("data", "inputs", "image_data", "images")],
                "properties": {
                    "data": {"type": "array", "minItems": 1, "items": {}},
                    "inputs": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"type": "array", "items": {}},
                    },
                    "image_data": {"type": "string", "format": "byte"},
                    "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "byte"}},
                },
            }
        },
        "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": multipart_files("file", MAX_FILES)},
    },
}
