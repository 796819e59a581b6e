"""The agent's output tensors are bit for bit what the runtime itself returns for the same input.

For every bundled model at batch 1 and 32: ``Engine.predict(answers=False)`` against a plain
onnxruntime session (ZipMap dicts read into an array by class) or a plain LiteRT interpreter
(int8 input quantized and int8 output dequantized here with numpy's textbook formulas), with
the same thread settings. Same bytes, dtypes and shapes: the runtime layer's fast paths
(validation, kept quantization buffers, dequantization tables, ZipMap taken off the graph)
change nothing a caller receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import Manifest, load_golden
from edge_agent.runtime.store import ModelStore
from tests.conftest import MODELS, bundled_models

Raw = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(ModelStore(MODELS, tmp_path_factory.mktemp("parity") / "s.json"))
    yield engine
    engine.close()


def onnx_raw(path: Path, m: Manifest) -> Raw:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [t.name for t in m.outputs]
    maps = {t.name for t in m.outputs if t.kind == "sequence_of_maps"}
    fixed = m.inputs[0].shape[0] if m.inputs[0].shape and m.inputs[0].shape[0] else None

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        step = fixed or n
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for i in range(0, n, step):
            got = session.run(names, {k: v[i : i + step] for k, v in feeds.items()})
            for name, value in zip(names, got, strict=True):
                if name in maps:
                    keys = sorted(value[0])
                    parts[name].append(np.array([[row[k] for k in keys] for row in value], dtype=np.float32))
                else:
                    parts[name].append(value)
        return {k: np.concatenate(v) for k, v in parts.items()}

    return run


def litert_raw(path: Path, m: Manifest) -> Raw:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    ins = {d["name"]: d for d in interp.get_input_details()}
    outs = {d["name"]: d for d in interp.get_output_details()}
    inputs, outputs = [ins[t.name] for t in m.inputs], [outs[t.name] for t in m.outputs]
    dynamic = all(d["shape_signature"][0] == -1 for d in inputs)

    def quantized(d: dict[str, Any]) -> bool:
        return bool(d["quantization"][0] != 0.0 and np.issubdtype(d["dtype"], np.integer))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        step = n if dynamic else int(inputs[0]["shape"][0])
        if dynamic:
            for d in inputs:
                interp.resize_tensor_input(d["index"], [n, *d["shape_signature"][1:]])
            interp.allocate_tensors()
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in m.outputs}
        for i in range(0, n, step):
            for d in inputs:
                x = feeds[d["name"]][i : i + step]
                if quantized(d):
                    scale, zero_point = d["quantization"]
                    info = np.iinfo(d["dtype"])
                    x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
                interp.set_tensor(d["index"], np.ascontiguousarray(x.astype(d["dtype"])))
            interp.invoke()
            for t, d in zip(m.outputs, outputs, strict=True):
                y = interp.get_tensor(d["index"])
                if quantized(d):
                    scale, zero_point = d["quantization"]
                    y = (y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
                parts[t.name].append(y)
        return {k: np.concatenate(v) for k, v in parts.items()}

    return run


def batch_of(m: Manifest, golden: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """The golden rows repeated to ``n``, with a little noise on float inputs (float32, contiguous)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in m.inputs:
        ref = np.asarray(golden[spec.name])
        if ref.ndim == len(spec.shape) - 1:
            ref = ref[None, ...]
        x = ref[np.arange(n) % ref.shape[0]]
        if x.dtype.kind == "f":
            x = x + rng.normal(0, 0.01, x.shape)
        out[spec.name] = np.ascontiguousarray(x.astype(spec.dtype))
    return out


@pytest.mark.parametrize("name", bundled_models())
def test_agent_outputs_are_the_runtime_outputs_bit_for_bit(eng: Engine, name: str) -> None:
    model = eng.model(name)
    m = model.manifest
    pkg = eng.store.package_dir(m.name, m.version)
    raw = (onnx_raw if m.backend == "onnx" else litert_raw)(pkg / m.file, m)
    golden, _ = load_golden(pkg, m)
    for n in (1, 32, 1):  # back to 1: a LiteRT model resized down gives the same answers
        feeds = batch_of(m, golden, n, seed=n)
        want = raw(feeds)
        got = eng.predict(name, feeds, answers=False).outputs
        assert list(got) == [t.name for t in m.outputs]
        for key, w in want.items():
            g = got[key]
            assert (g.dtype, g.shape) == (w.dtype, w.shape), key
            assert g.tobytes() == w.tobytes(), f"{name} batch {n} output {key}: differs from the runtime's"
