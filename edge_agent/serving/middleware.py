"""Pure ASGI middleware: request body limit and bearer-token auth.

Both answer before the route runs. The body limit is checked against
``Content-Length`` first and then counted chunk by chunk, so a chunked upload
over the limit is cut off after at most the limit is read.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.access import BEARER_HINT, bearer_ok
from edge_agent.serving.metrics import Metrics

PUBLIC_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/health/live", "/health/ready"})


async def _reply(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """The request-body limit, for declared and chunked bodies alike; the gateway's, the model
    servers' and the cloud API's.

    A ``Content-Length`` over the limit is refused before anything is read; one within it passes
    untouched (the HTTP parser never reads past a declared length). A body without one
    (``Transfer-Encoding: chunked``) is read here, chunk by chunk, and refused with the same 413 as
    soon as it passes the limit, before the route or any body parsing sees it; within the limit it
    is handed to the app whole (every route reads its body whole anyway). Later ``receive`` calls
    (a stream waiting for the client to go) pass through."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, hint: str = "send less data or raise max_body_bytes"
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.too_large = {
            "error": f"request body is over the limit of {max_bytes} bytes; {hint}",
            "code": "payload_too_large",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _reply(send, 400, {"error": "invalid Content-Length header", "code": "bad_request"})
                elif int(value) > self.max_bytes:
                    await _reply(send, 413, self.too_large)
                else:
                    await self.app(scope, receive, send)
                return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _reply(send, 413, self.too_large)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        await self.app(scope, replay, send)


class CountRequests:
    """``edge_requests_total`` by model, route and status. Pure ASGI: a ``BaseHTTPMiddleware``
    streams the request body through extra tasks and memory streams (about 3 ms per 800 kB)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            model = scope.get("path_params", {}).get("name", "")
            self.metrics.requests.labels(model, endpoint, str(status)).inc()


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not bearer_ok(given, self.token):
            await _reply(
                send,
                401,
                {
                    "error": f"missing or wrong API token: {BEARER_HINT}",
                    "code": "unauthorized",
                },
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)
