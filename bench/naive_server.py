"""Path (b) of the serving benchmark: the book's "web single" design.

A plain FastAPI app: a pydantic request model ``{"data": [[...]]}`` (nested lists of floats,
as deep as the model's input), a synchronous endpoint (FastAPI runs it in its thread pool)
that turns the lists into an array, calls the runtime once for this one request and
returns ``{"prediction": [output.tolist(), ...]}`` through the declared response model. No
batching, no binary bodies, no input checks beyond pydantic's.

The raw runtime wrappers (``load_runner``) live here too: the benchmark's path (a) and its
reference answers use the same bare ``InferenceSession.run`` / LiteRT ``invoke`` calls.

    python bench/naive_server.py --model models/digits_int8/1/digits_int8.onnx --rank 4 --port 8100
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Data`` class in
# the endpoint's signature (it is built at run time for the model's input rank).
import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    input_name: str
    output_names: list[str]
    fixed_batch: int | None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """One runtime call on a float32 batch; outputs in the model's order."""
        ...


class OnnxRunner:
    """A bare onnxruntime session with the agent's settings (one intra-op thread)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        # telemetry off, as the agent runs it (edge_agent/runtime/backends/onnx.py: load_ort)
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]
        first = self._session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) else None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self._session.run(self.output_names, {self.input_name: x}))


class LiteRTRunner:
    """A bare LiteRT interpreter; fixed-batch models run one slice per invoke. Not thread-safe
    by itself, so calls are serialised (the naive server's handlers run on a thread pool)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads)
        self._interp.allocate_tensors()
        (inp,) = self._interp.get_input_details()
        self._in_index = int(inp["index"])
        self.input_name = str(inp["name"])
        outs = self._interp.get_output_details()
        self._out_indices = [int(o["index"]) for o in outs]
        self.output_names = [str(o["name"]) for o in outs]
        sig = [int(d) for d in inp["shape_signature"]]
        self.fixed_batch = sig[0] if sig and sig[0] > 0 else None
        self._current = -1
        self._lock = threading.Lock()

    def _invoke(self, x: np.ndarray) -> list[np.ndarray]:
        if self.fixed_batch is None and x.shape[0] != self._current:
            self._interp.resize_tensor_input(self._in_index, list(x.shape), strict=False)
            self._interp.allocate_tensors()
            self._current = x.shape[0]
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._out_indices]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            b = self.fixed_batch
            if b is None or x.shape[0] == b:
                return self._invoke(x)
            parts = [self._invoke(x[i : i + b]) for i in range(0, x.shape[0], b)]
            return [np.concatenate(cols) for cols in zip(*parts, strict=True)]


def load_runner(path: Path, threads: int = 1) -> Runner:
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads)
    if path.suffix == ".tflite":
        return LiteRTRunner(path, threads)
    raise ValueError(f"{path}: expected a .onnx or .tflite file")


def create_app(runner: Runner, rank: int) -> Any:
    """The book's endpoint for a model whose input has ``rank`` dimensions (batch included)."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    nested: Any = float
    for _ in range(rank):
        nested = list[nested]

    class Data(BaseModel):
        data: nested  # type: ignore[valid-type]

    app = FastAPI(title="naive single-request server (book design)")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"health": "ok"}

    @app.post("/predict")
    def predict(data: Data) -> dict[str, list[Any]]:
        x = np.asarray(data.data, dtype=np.float32)
        outputs = runner.run(x)
        return {"prediction": [o.tolist() for o in outputs]}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The book's single-request FastAPI model server.")
    p.add_argument("--model", type=Path, required=True, help=".onnx or .tflite file")
    p.add_argument("--rank", type=int, required=True, help="dimensions of the input, batch included")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=1, help="runtime intra-op threads (the gateway's default)")
    args = p.parse_args(argv)

    import uvicorn

    app = create_app(load_runner(args.model, args.threads), args.rank)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
