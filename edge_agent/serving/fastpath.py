"""A fast path for the two hot inference routes.

``POST /v1/models/{name}/predict`` and ``POST /v2/models/{name}/infer`` (no query
string) are served here by the same handlers as the routed versions, but
without FastAPI's routing, parameter solving and exception layers: on a tiny
model those cost more CPU than the model itself. The gateway's own middleware
(request counter, token, body limit) still wraps this, errors get the same JSON
answers and the same failure counts, and every other request (and these routes
with a query string) goes through FastAPI as usual. What it answers is what the
OpenAPI document says of the routed versions (tests/serving/test_openapi.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.errors import EdgeAgentError
from edge_agent.serving import v1, v2
from edge_agent.serving.codec import json_response
from edge_agent.serving.deps import gateway

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    """What the request counter reads from ``scope["route"]``."""

    path: str


V1 = (re.compile(r"^/v1/models/([^/]+)/predict$"), _Route("/v1/models/{name}/predict"))
V2 = (re.compile(r"^/v2/models/([^/]+)/infer$"), _Route("/v2/models/{name}/infer"))


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        hit = next(((m, r) for p, r in (V1, V2) if (m := p.match(path)) is not None), None)
        if hit is None:
            await self.app(scope, receive, send)
            return
        match, route = hit
        name = match.group(1)
        scope["path_params"] = {"name": name}
        scope["route"] = route
        request = Request(scope, receive)
        gw = gateway(request)
        try:
            if route is V1[1]:
                response: Response = await v1.predict_fast(gw, request, name)
            else:
                response = await v2.infer_fast(request, name)
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
