"""The cloud API's request-body limit, for declared and for chunked bodies alike.

A ``Content-Length`` over the limit is refused before anything is read. A body without one
(``Transfer-Encoding: chunked``) is read here, chunk by chunk, and refused with the same 413 as
soon as it passes the limit, before the route or FastAPI's body parsing sees any of it. A body
within the limit is handed to the app whole (the API's bodies are small JSON and form posts).
Pure ASGI: later ``receive`` calls (an event stream waiting for the client to go) pass through.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _reply(send: Send, status: int, message: str, code: str) -> None:
    body = orjson.dumps({"error": message, "code": code})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body is over {self.max_bytes} bytes"
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "invalid Content-Length header", "bad_request")
                return
            if int(declared) > self.max_bytes:
                await _reply(send, 413, too_large, "payload_too_large")
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
                await _reply(send, 413, too_large, "payload_too_large")
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
