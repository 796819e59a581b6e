"""Timestamps inside a gateway for ``bench/request_stages.py``: imported by a gateway process whose
``PYTHONPATH`` starts with this folder, active only when ``BENCH_STAGES_OUT`` names a file.

It wraps uvicorn's httptools protocol (bytes in, answer written), the gateway's ASGI entry, the
JSON parse, the service, the input check and the runtime call, and records one row of
``time.perf_counter_ns`` marks per request. After ``BENCH_STAGES_N`` answers it writes the rows
(JSON) to ``BENCH_STAGES_OUT`` and stops recording. One request at a time: rows of requests that
overlap are dropped. What it wraps are private parts of uvicorn and of the agent; a change to them
makes the import fail here, loudly (the gateway's log says which), not the figures wrong.
"""

from __future__ import annotations

import os

OUT = os.environ.get("BENCH_STAGES_OUT")

if OUT:
    import functools
    import json
    import time
    from typing import Any

    import uvicorn.protocols.http.httptools_impl as _h

    from edge_agent.runtime import engine as _engine
    from edge_agent.runtime import inputs as _inputs
    from edge_agent.serving import codec as _codec
    from edge_agent.serving import fastpath as _fastpath
    from edge_agent.serving import service as _service
    from edge_agent.serving import v2 as _v2

    _N = int(os.environ.get("BENCH_STAGES_N", "500"))
    _rows: list[dict[str, int]] = []
    _cur: dict[str, int] = {}
    _now = time.perf_counter_ns

    def _add(key: str, ns: int) -> None:
        _cur[key] = _cur.get(key, 0) + ns

    def _dump() -> None:
        tmp = OUT + ".tmp"
        with open(tmp, "w") as f:
            json.dump(_rows, f)
        os.replace(tmp, OUT)

    _data_received = _h.HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        if "rx" in _cur and "end" not in _cur and "start" in _cur:
            _cur["overlap"] = 1  # bytes of the next request before this answer was written
        _cur.setdefault("rx", _now())
        _data_received(self, data)

    _send = _h.RequestResponseCycle.send

    async def send(self: Any, message: Any) -> None:
        t0 = _now()
        await _send(self, message)
        t1 = _now()
        if message["type"] == "http.response.start":
            _cur["start"], _cur["start_done"] = t0, t1
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            _cur["body"], _cur["end"] = t0, t1
            if len(_rows) < _N:
                if "overlap" not in _cur and "svc0" in _cur:
                    _rows.append(dict(_cur))
                if len(_rows) == _N:
                    _dump()
            _cur.clear()

    _app_call = _fastpath.GatewayApp.__call__

    async def app_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            _cur.setdefault("app", _now())
        await _app_call(self, scope, receive, send)

    def timed(key: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = _now()
            try:
                return fn(*args, **kwargs)
            finally:
                _add(key, _now() - t0)

        return wrapper

    _predict = _service.InferenceService.predict

    async def predict(self: Any, *args: Any, **kwargs: Any) -> Any:
        _cur["svc0"] = _now()
        try:
            return await _predict(self, *args, **kwargs)
        finally:
            _cur["svc1"] = _now()

    _h.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    _h.RequestResponseCycle.send = send  # type: ignore[method-assign]
    _fastpath.GatewayApp.__call__ = app_call  # type: ignore[method-assign]
    _service.InferenceService.predict = predict  # type: ignore[method-assign]
    _codec.loads = _v2.loads = timed("parse", _codec.loads)
    _inputs.InputCheck.__call__ = timed("check", _inputs.InputCheck.__call__)  # type: ignore[method-assign]
    _engine.Engine.infer = timed("runtime", _engine.Engine.infer)  # type: ignore[method-assign]
