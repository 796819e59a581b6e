"""Horizontal microservice: one-vs-rest models as separate model@NAME processes.

``POST /microservice/iris`` fans the rows out to every model in
``services.microservice`` in parallel, each call bounded by
``services.timeout_s``, and aggregates per row as the book's proxy does (the
class whose "is this class" probability, index 0, is highest wins) but honestly:
every score, and ``weak`` when the winner scores under ``services.weak_below``.
A service that is down, broken or too slow is left out and named in
``unavailable``: the answer degrades instead of failing; only when no service
answers is it a 503. ``GET /health/all`` reports the gateway and every
configured service, "degraded" (still HTTP 200) when any is down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent import __version__
from edge_agent.errors import InvalidInput
from edge_agent.rolestatus import read_status
from edge_agent.runtime.package import Classification
from edge_agent.runtime.postprocess import postprocess
from edge_agent.services.client import (
    Inferred,
    ServiceNotConfigured,
    ServiceRejected,
    Services,
    ServiceTimeout,
    ServiceUnavailable,
)
from edge_agent.serving.codec import json_response, loads
from edge_agent.serving.deps import gateway
from edge_agent.serving.openapi import errors
from edge_agent.serving.prep_pred import services

router = APIRouter(tags=["horizontal microservice"])

ROWS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "array", "minItems": 1, "items": {"type": "number"}},
                    }
                },
            }
        }
    },
}


def _rows(doc: Any) -> np.ndarray:
    if not isinstance(doc, dict) or "data" not in doc:
        raise InvalidInput('expected a JSON object {"data": [[...], ...]}')
    try:
        rows = np.asarray(doc["data"])
    except (ValueError, TypeError):
        rows = np.asarray([], dtype=object)
    if rows.dtype.kind not in "iuf" or rows.ndim not in (1, 2) or rows.size == 0:
        raise InvalidInput('"data" must be one row of numbers or a non-empty list of equal-length rows')
    return rows[None, :] if rows.ndim == 1 else rows


async def _call(hub: Services, name: str, rows: np.ndarray, timeout_s: float) -> tuple[str, Inferred]:
    """One service, the whole exchange (metadata when not cached, then infer) within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            manifest = await hub.manifest(name, timeout_s)
            if not isinstance(manifest.postprocessing, Classification) or len(manifest.inputs) != 1:
                raise ServiceUnavailable(f"model@{name} is not a single-input classifier", service=name)
            inferred = await hub.infer(name, {manifest.inputs[0].name: rows}, timeout_s)
    except TimeoutError:
        raise ServiceTimeout(f"model@{name} gave no answer within {timeout_s * 1000:.0f} ms") from None
    label = inferred.manifest.labels[0] if inferred.manifest.labels else name
    return label, inferred


@router.post(
    "/microservice/iris",
    summary="Fan out to the one-vs-rest services; winner, every score, weak flag; degrades when one is down",
    openapi_extra={"requestBody": ROWS_BODY},
    responses=errors(404, 409, 415, 422, 503, 504),
)
async def microservice_iris(request: Request) -> Response:
    cfg = gateway(request).config.services
    hub = services(request)
    rows = _rows(loads(await request.body()))
    t0 = time.perf_counter()
    names = list(cfg.microservice)
    outcomes = await asyncio.gather(
        *(_call(hub, n, rows, cfg.timeout_s) for n in names), return_exceptions=True
    )
    answered: list[tuple[str, Inferred]] = []
    report: dict[str, dict[str, Any]] = {}
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, ServiceRejected):
            raise outcome  # the input is wrong: every service would say so
        if isinstance(outcome, ServiceNotConfigured | ServiceUnavailable):
            status = {ServiceTimeout: "timeout", ServiceNotConfigured: "unconfigured"}.get(
                type(outcome), "down"
            )
            report[name] = {"status": status, "error": outcome.message}
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            answered.append(outcome)
            report[name] = {"status": "ok", "version": outcome[1].manifest.version, "ms": outcome[1].ms}
    unavailable = [n for n in names if report[n]["status"] != "ok"]
    if all(isinstance(o, ServiceNotConfigured) for o in outcomes):
        raise ServiceNotConfigured(
            f"the microservice pattern is not set up here: give {names} URLs in services.models "
            "(EDGE_SERVICES__MODELS)"
        )
    if not answered:
        details = "; ".join(f"{n}: {report[n]['error']}" for n in names)
        raise ServiceUnavailable(
            f"no microservice answered: {details or 'none configured'}", unavailable=names
        )
    scores = [
        (label, [r["probabilities"][0] for r in postprocess(inf.manifest, inf.outputs, [None] * len(rows))])
        for label, inf in answered
    ]
    results = []
    for i in range(len(rows)):
        row = {label: s[i] for label, s in scores}
        winner = max(row, key=row.__getitem__)
        results.append(
            {"winner": winner, "score": row[winner], "weak": row[winner] < cfg.weak_below, "scores": row}
        )
    body = {
        "results": results,
        "unavailable": unavailable,
        "services": report,
        "timings_ms": {"total": round((time.perf_counter() - t0) * 1000.0, 3)},
    }
    return json_response(body)


@router.get(
    "/health/all",
    summary="The gateway and every configured service: up/down, latency; degraded if any is down",
)
async def health_all(request: Request) -> Response:
    gw = gateway(request)
    cfg = gw.config.services
    hub = services(request)
    targets = [("prep", "prep", cfg.prep_url), *(("model", n, u) for n, u in cfg.models.items())]
    t0 = time.perf_counter()
    entries = await asyncio.gather(*(hub.probe(role, n, url, cfg.timeout_s) for role, n, url in targets))
    for name in cfg.microservice:
        if name not in cfg.models:  # in the fan-out list but given no URL: shown, not probed
            entries.append({"name": name, "role": "model", "url": None, "status": "unconfigured"})
    down = [e["name"] for e in entries if e["status"] == "down"]
    roles = read_status(gw.config.data_dir)  # written by `edge-agent up`, when it runs here
    if roles is not None:
        down += [r["role"] for r in roles.get("roles", []) if r.get("state") != "running"]
    body = {
        "status": "ok" if gw.ready and not down else "degraded",
        "gateway": {"status": "up" if gw.ready else "starting", "version": __version__},
        "services": entries,
        "roles": roles.get("roles", []) if roles is not None else None,
        "disk": gw.storage.disk.to_dict(),
        "down": down,
        "checked_in_ms": round((time.perf_counter() - t0) * 1000.0, 3),
    }
    return json_response(body)
