"""A fast path for the hot inference routes.

``POST /v1/models/{name}/predict``, ``POST /v2/models/{name}/infer``, the
book's ``POST /predict`` and the prediction-cache look-up by digest
``GET /v1/models/{name}/predictions/{sha256}`` (no query string) are served here by the same
handlers as the routed versions, but without FastAPI's routing, parameter
solving and exception layers: on a tiny model those cost more CPU than the
model itself. The gateway's own middleware (request counter, token, body
limit) still wraps this, errors get the same JSON answers and the same failure
counts, and every other request (and these routes with a query string) goes
through FastAPI as usual. The route is found with string tests, not regular
expressions, and the gateway is handed over once, not looked up per request. What it answers is what the
OpenAPI document says of the routed versions (tests/serving/test_openapi.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.errors import EdgeAgentError
from edge_agent.serving import book, caches, v1, v2
from edge_agent.serving.codec import json_response
from edge_agent.serving.deps import Gateway

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    """What the request counter reads from ``scope["route"]``."""

    path: str


V1 = _Route("/v1/models/{name}/predict")
V2 = _Route("/v2/models/{name}/infer")
BOOK = _Route("/predict")
BY_DIGEST = _Route("/v1/models/{name}/predictions/{sha256}")


def match(path: str) -> tuple[_Route, str] | None:
    """(route, model name) of a hot route, else None."""
    if path == "/predict":
        return BOOK, ""
    if path.startswith("/v1/models/") and path.endswith("/predict"):
        name, route = path[11:-8], V1
    elif path.startswith("/v2/models/") and path.endswith("/infer"):
        name, route = path[11:-6], V2
    else:
        return None
    if not name or "/" in name:
        return None
    return route, name


def match_digest(path: str) -> tuple[_Route, str] | None:
    """(BY_DIGEST, "name/sha256") for a look-up by digest, else None."""
    if not path.startswith("/v1/models/"):
        return None
    parts = path[11:].split("/")
    if len(parts) != 3 or parts[1] != "predictions" or not parts[0] or not parts[2]:
        return None
    return BY_DIGEST, f"{parts[0]}/{parts[2]}"


class FastPath:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gw = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        hit = match(path) if method == "POST" else match_digest(path) if method == "GET" else None
        if hit is None:
            await self.app(scope, receive, send)
            return
        route, name = hit
        scope["route"] = route
        gw = self.gw
        if route is BY_DIGEST:
            name, sha256 = name.split("/", 1)
            scope["path_params"] = {"name": name, "sha256": sha256}
        else:
            scope["path_params"] = {"name": name} if name else {}
        request = Request(scope, receive)
        try:
            if route is BY_DIGEST:
                response: Response = caches.answer_by_digest(gw, name, sha256, False)
            elif route is V1:
                response = await v1.predict_fast(gw, request, name)
            elif route is V2:
                response = await v2.infer_fast(gw, request, name)
            else:
                response = await book.predict_fast(gw, request)
        except EdgeAgentError as exc:
            gw.metrics.failures.labels(name, route.path, exc.code).inc()
            status = exc.status if exc.status < 500 or exc.status in (503, 504, 507) else 500
            if status == 500:
                logger.error("POST %s failed: %s", path, exc.message)
            response = json_response(exc.to_dict(), status=status)
        except HTTPException as exc:  # Starlette's own (a malformed multipart body): as the app answers it
            response = json_response(
                {"error": str(exc.detail), "code": "http_error"}, exc.status_code, dict(exc.headers or {})
            )
        except Exception as exc:  # a bug: the same JSON 500 as the routed endpoints give
            gw.metrics.failures.labels(name, route.path, "internal").inc()
            logger.exception("POST %s: unexpected error", path)
            response = json_response(
                {"error": f"internal error: {type(exc).__name__}", "code": "internal"}, 500
            )
        await response(scope, receive, send)
