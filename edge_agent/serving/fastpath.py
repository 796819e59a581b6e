"""A fast path for the hot inference routes, in front of the whole application.

``POST /v1/models/{name}/predict``, ``POST /v2/models/{name}/infer``, the
book's ``POST /predict`` and the prediction-cache look-up by digest
``GET /v1/models/{name}/predictions/{sha256}`` (no query string) are served here by the same
handlers as the routed versions, but without FastAPI: its routing, parameter solving,
exception layers and middleware stack cost more CPU than a tiny model. ``GatewayApp`` (the
gateway's FastAPI application) asks ``FastPath.take`` first; it takes a request only in the
common case, checking what the middleware would (one pass over the headers): a declared
``Content-Length`` within the body limit and, when the gateway has a token, the right
``Authorization``. Anything else (no or a bad ``Content-Length``, a chunked body, a missing or
wrong token, a query string, any other route) goes through FastAPI and its middleware, which
answer it as before (400, 413, 401, the routed handler). The request counter and the failure
counter are kept here for what the fast path answers, with the labels the middleware gives;
errors get the same JSON answers. The body is read here, straight from ``receive`` (one
message in the usual case, handed on without a copy); a client that goes away before its body
is whole gets no answer and nothing is logged as an error. The route is found with string
tests, not regular expressions, and the gateway is handed over once, not looked up per
request. What it answers is what the OpenAPI document says of the routed versions
(tests/serving/test_openapi.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from edge_agent.access import bearer_ok
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
    def __init__(self, gateway: Gateway, max_body_bytes: int, token: str | None) -> None:
        self.gw = gateway
        self.max_body_bytes = max_body_bytes
        self.token = token
        self._counted: dict[tuple[str, str, int], Any] = {}  # (model, route, 200) -> counter child

    def take(self, scope: Scope) -> tuple[_Route, str] | None:
        """(route, model name or "name/sha256") when this request is the fast path's, else None."""
        if scope["type"] != "http" or scope["query_string"]:
            return None
        method = scope["method"]
        hit = (
            match(scope["path"])
            if method == "POST"
            else match_digest(scope["path"])
            if method == "GET"
            else None
        )
        if hit is None:
            return None
        length: bytes | None = None
        auth = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"authorization":
                auth = value
        if method == "POST" and (length is None or not length.isdigit() or int(length) > self.max_body_bytes):
            return None  # the middleware answers (400, 413) or reads the chunked body
        if self.token is not None and not bearer_ok(auth, self.token):
            return None  # the middleware answers 401
        return hit

    async def serve(self, hit: tuple[_Route, str], scope: Scope, receive: Receive, send: Send) -> None:
        route, name = hit
        scope["route"] = route
        gw = self.gw
        if route is BY_DIGEST:
            name, sha256 = name.split("/", 1)
            scope["path_params"] = {"name": name, "sha256": sha256}
        else:
            scope["path_params"] = {"name": name} if name else {}
        if route is BY_DIGEST:
            request = Request(scope, receive)
        else:
            body = await _read_body(receive)
            if body is None:
                return  # the client went away before its body was whole: nobody to answer
            request = _ReadRequest(scope, receive, body)
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
                logger.error("%s %s failed: %s", scope["method"], scope["path"], exc.message)
            response = json_response(exc.to_dict(), status=status)
        except HTTPException as exc:  # Starlette's own (a malformed multipart body): as the app answers it
            response = json_response(
                {"error": str(exc.detail), "code": "http_error"}, exc.status_code, dict(exc.headers or {})
            )
        except Exception as exc:  # a bug: the same JSON 500 as the routed endpoints give
            gw.metrics.failures.labels(name, route.path, "internal").inc()
            logger.exception("%s %s: unexpected error", scope["method"], scope["path"])
            response = json_response(
                {"error": f"internal error: {type(exc).__name__}", "code": "internal"}, 500
            )
        status = response.status_code
        try:
            await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            self._count(name, route.path, status)

    def _count(self, model: str, endpoint: str, status: int) -> None:
        """``edge_requests_total``; the children of successful answers are kept (their model names
        exist), others are looked up each time (a client may send any name)."""
        key = (model, endpoint, status)
        child = self._counted.get(key)
        if child is None:
            child = self.gw.metrics.requests.labels(model, endpoint, str(status))
            if status == 200:
                self._counted[key] = child
        child.inc()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (the declared length, within the limit: ``take`` checked it), or None
    when the client disconnected first. One message in the usual case: its bytes, not a copy."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


class _ReadRequest(Request):
    """A request whose body the fast path has read: ``body()`` and ``stream()`` (which the multipart
    parser reads) give it without another pass through ``receive`` or a joined copy."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        self._whole = body

    async def body(self) -> bytes:
        return self._whole

    async def stream(self) -> AsyncGenerator[bytes, None]:
        yield self._whole
        yield b""


class GatewayApp(FastAPI):
    """The gateway's application: the fast path first, FastAPI (and its middleware) for the rest."""

    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        hit = None if fast is None else fast.take(scope)
        if hit is None or fast is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it (its form parser's errors become 400s by it)
        await fast.serve(hit, scope, receive, send)
