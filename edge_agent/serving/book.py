"""The book's web-single and synchronous patterns, on the default model.

Same response shapes as the book where one exists: ``{"prediction": [...]}``
for one row. Unlike the book, a batch gets one answer per row:
``{"prediction": [[...], [...]]}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.runtime.engine import Prediction
from edge_agent.runtime.package import load_golden
from edge_agent.serving.codec import json_response, read_inputs
from edge_agent.serving.deps import TENSOR_BODY, Gateway, gateway
from edge_agent.serving.openapi import errors

MODEL = errors(404, 503)
PREDICT = errors(404, 422, 503)

router = APIRouter(tags=["book patterns (web single, synchronous)"])


def _answer(row: dict[str, Any]) -> Any:
    if "boxes" in row:
        return row["boxes"]
    if "probabilities" in row:
        return row["probabilities"]
    return row


def _shape(pred: Prediction, rows: list[Any]) -> dict[str, Any]:
    return {"prediction": rows[0] if len(rows) == 1 else rows, "model": pred.model, "version": pred.version}


@router.get("/health", summary="Liveness, as in the book")
async def health() -> dict[str, str]:
    return {"health": "ok"}


@router.get("/metadata", summary="Input and output description of the default model", responses=MODEL)
async def metadata(request: Request) -> Response:
    gw = gateway(request)
    name = gw.config.default_model
    m = gw.engine.model(name).manifest
    inputs, _ = load_golden(gw.engine.store.package_dir(name, m.version), m)
    first_in = inputs[m.inputs[0].name][:1]
    pred = await gw.service.predict(name, tensors={m.inputs[0].name: first_in})
    return json_response(
        {
            "model": name,
            "version": m.version,
            "data_type": m.inputs[0].dtype,
            "data_structure": "(" + ",".join("1" if d is None else str(d) for d in m.inputs[0].shape) + ")",
            "data_sample": first_in.astype(np.float64).round(6).tolist(),
            "prediction_type": "float32",
            "prediction_structure": f"(1,{len(m.labels)})" if m.labels else "(1,)",
            "prediction_sample": _answer(pred.results[0]),
        }
    )


@router.get("/label", summary="Class index -> label of the default model", responses=MODEL)
async def label(request: Request) -> Response:
    gw = gateway(request)
    m = gw.engine.model(gw.config.default_model).manifest
    return json_response({str(i): name for i, name in enumerate(m.labels)})


@router.get("/predict/test", summary="Predict the default model's golden sample", responses=MODEL)
async def predict_test(request: Request) -> Response:
    gw = gateway(request)
    name = gw.config.default_model
    m = gw.engine.model(name).manifest
    inputs, _ = load_golden(gw.engine.store.package_dir(name, m.version), m)
    pred = await gw.service.predict(name, tensors={k: v[:1] for k, v in inputs.items()})
    return json_response(_shape(pred, [_answer(r) for r in pred.results]))


@router.post(
    "/predict",
    summary="Predict with the default model",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=PREDICT,
)
async def predict(request: Request) -> Response:
    return await predict_fast(gateway(request), request)


async def predict_fast(gw: Gateway, request: Request) -> Response:
    """Also the fast path's entry (edge_agent/serving/fastpath.py)."""
    name = gw.config.default_model
    tensors, images = await read_inputs(request, gw.engine.model(name).manifest, gw.engine.options.max_rows)
    pred = await gw.service.predict(name, tensors=tensors, images=images)
    return json_response(_shape(pred, [_answer(r) for r in pred.results]))


@router.post(
    "/predict/label",
    summary="Predicted label(s) of the default model",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=PREDICT,
)
async def predict_label(request: Request) -> Response:
    gw = gateway(request)
    name = gw.config.default_model
    tensors, images = await read_inputs(request, gw.engine.model(name).manifest, gw.engine.options.max_rows)
    pred = await gw.service.predict(name, tensors=tensors, images=images)
    rows = [{"label": r["label"]} if "label" in r else _answer(r) for r in pred.results]
    return json_response(_shape(pred, rows))
