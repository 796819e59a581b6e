"""The fast path frees a request's parsed JSON after its answer is written, not before (heap.py):
the real gateway application, called in-process like the ASGI server calls it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.config import load_config, with_overrides
from edge_agent.serving import heap
from edge_agent.serving.app import create_app
from edge_agent.serving.fastpath import HOLD_MIN_BYTES
from tests.conftest import copy_models

ROW = [[[float(i + j) / 64.0 for j in range(8)] for i in range(8)]]  # [1, 8, 8]
ROWS = [ROW] * 48  # digits: [48, 1, 8, 8], a body over HOLD_MIN_BYTES


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }


async def _call(
    app: Any, path: str, doc: dict[str, Any]
) -> tuple[int, bytes, list[object] | None, list[object] | None]:
    """Status, answer, what was held when the answer was written, and that list once it is over."""
    body = orjson.dumps(doc)
    status, answer, held_at_write, holder = 0, b"", None, None

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer, held_at_write, holder
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            answer = message["body"]
            holder = heap._HELD.get()
            held_at_write = None if holder is None else list(holder)

    await app(_scope(path, body), receive, send)
    return status, answer, held_at_write, holder


@pytest.fixture
def app(tmp_path: Path) -> Any:
    root = copy_models(tmp_path / "models", ["digits"])
    config = with_overrides(
        load_config(env={"EDGE_CACHE__PREDICTION_ENABLED": "false"}),
        model_dir=root,
        data_dir=tmp_path / "data",
    )
    return create_app(config)


def test_the_parsed_body_is_held_until_the_answer_is_written(app: Any) -> None:
    async def main() -> None:
        async with app.router.lifespan_context(app):
            for path, doc in (
                ("/v1/models/digits/predict", {"data": ROWS}),
                (
                    "/v2/models/digits/infer",
                    {"inputs": [{"name": "input", "shape": [48, 1, 8, 8], "datatype": "FP32", "data": ROWS}]},
                ),
            ):
                assert len(orjson.dumps(doc)) >= HOLD_MIN_BYTES
                status, answer, held, holder = await _call(app, path, doc)
                assert status == 200, answer
                assert held is not None and len(held) == 1, held  # this request's tensors, nothing else
                (tensors,) = held
                assert isinstance(tensors, dict) and "input" in tensors
                assert holder == []  # emptied once written, not left to whatever copied the context
                assert heap._HELD.get() is None  # nothing leaks into the next request

    asyncio.run(main())


def test_a_small_body_is_not_held(app: Any) -> None:
    async def main() -> None:
        async with app.router.lifespan_context(app):
            doc = {"data": ROWS[:1]}
            assert len(orjson.dumps(doc)) < HOLD_MIN_BYTES
            status, answer, held, _ = await _call(app, "/v1/models/digits/predict", doc)
            assert status == 200, answer
            assert held is None  # freeing it costs less than holding it

    asyncio.run(main())


def test_outside_the_fast_path_nothing_is_held() -> None:
    heap.hold_until_answered({"x": [1.0]})  # no request: a no-op
    assert heap._HELD.get() is None
    held: list[object] = []
    token = heap.holding(held)
    try:
        heap.hold_until_answered("body")
    finally:
        heap.release(token)
    heap.hold_until_answered("after")
    assert held == ["body"] and heap._HELD.get() is None
