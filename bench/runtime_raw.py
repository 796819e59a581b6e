"""Runtime benchmark (bench/runtime.py): its settings, the inputs, the raw onnxruntime / LiteRT runners
it compares the Engine with, and the alternating timer."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime.package import ImagePreprocess, Manifest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BATCH = 32
TARGET_OVERHEAD = 1.10
SEED = 20240611

Call = Callable[[], object]


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to measure: seconds per (model, batch size), raw and agent together."""

    batch1_s: float
    batch32_s: float
    warmup_s: float
    min_warmup: int
    min_calls: int
    max_calls: int


FULL = Budget(batch1_s=3.0, batch32_s=5.0, warmup_s=0.3, min_warmup=5, min_calls=30, max_calls=50_000)
QUICK = Budget(batch1_s=0.12, batch32_s=0.2, warmup_s=0.02, min_warmup=2, min_calls=5, max_calls=2_000)


# -- inputs ----------------------------------------------------------------------------------------
def _image_range(pre: ImagePreprocess) -> tuple[float, float]:
    """Smallest and largest value the image preprocessing can produce (pixels 0..255)."""
    ends = np.array([0.0, 255.0]) * pre.scale + pre.offset
    mean = np.asarray(pre.mean or [0.0], dtype=np.float64)
    std = np.asarray(pre.std or [1.0], dtype=np.float64)
    values = (ends[:, None] - mean[None, :]) / std[None, :]
    return float(values.min()), float(values.max())


def _reference_rows(pkg: Path, golden: np.ndarray) -> np.ndarray:
    """Golden input rows plus any ``samples/*.npy`` of the same row shape, as float64."""
    rows = [golden.astype(np.float64)]
    for path in sorted((pkg / "samples").glob("*.npy")):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            continue
        if arr.ndim == golden.ndim and arr.shape[1:] == golden.shape[1:] and arr.dtype.kind in "fiub":
            rows.append(arr.astype(np.float64))
    return np.concatenate(rows)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        x = np.clip(np.rint(x), info.min, info.max)
    elif dt.kind == "b":
        x = x > 0.5
    return np.ascontiguousarray(x.astype(dt))


def make_inputs(
    manifest: Manifest, pkg: Path, golden: Mapping[str, np.ndarray], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``n`` rows per input, in the model's valid range, of the manifest's shapes and dtypes.

    Image inputs are the preprocessed golden tensor repeated with small noise (clipped to what the
    preprocessing can produce), so detectors see real content; tabular inputs are uniform between
    the per-feature minimum and maximum of the golden and sample rows.
    """
    out: dict[str, np.ndarray] = {}
    pre = manifest.preprocessing
    for spec in manifest.inputs:
        ref = np.asarray(golden[spec.name])
        if ref.ndim == len(spec.shape) - 1:
            ref = ref[None, ...]
        if pre is not None and pre.input == spec.name:
            lo, hi = _image_range(pre)
            base = ref[np.arange(n) % ref.shape[0]].astype(np.float64)
            noisy = base + rng.normal(0.0, 0.02 * (hi - lo), size=base.shape)
            out[spec.name] = _cast(np.clip(noisy, lo, hi), spec.dtype)
        else:
            rows = _reference_rows(pkg, ref)
            lo_f, hi_f = rows.min(axis=0), rows.max(axis=0)
            out[spec.name] = _cast(rng.uniform(lo_f, hi_f, size=(n, *ref.shape[1:])), spec.dtype)
    return out


def _batch(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])


# -- raw runtimes ------------------------------------------------------------------------------------
class OnnxRaw:
    """A bare onnxruntime session, configured like the agent's ONNX backend."""

    def __init__(self, path: Path, manifest: Manifest, threads: int) -> None:
        from edge_agent.runtime.backends.onnx import load_ort

        ort = load_ort()  # as the agent imports it: telemetry off

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.out_names = [t.name for t in manifest.outputs]
        self.maps = {t.name for t in manifest.outputs if t.kind == "sequence_of_maps"}
        first = self.session.get_inputs()[0].shape[0] if self.session.get_inputs()[0].shape else None
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None
        self.quantized_io = False

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Call:
        """The raw call for this batch: one ``run``, or one per slice for a fixed-batch model."""
        run, names, n = self.session.run, self.out_names, _batch(inputs)
        step = self.fixed_batch or n
        chunks = [{k: v[i : i + step] for k, v in inputs.items()} for i in range(0, n, step)]
        if len(chunks) == 1:
            feeds = chunks[0]

            def one() -> object:
                return run(names, feeds)

            return one

        def loop() -> object:
            return [run(names, feeds) for feeds in chunks]

        return loop

    def arrays(self, result: object, n: int) -> dict[str, np.ndarray]:
        """Raw result -> named arrays, only to check raw and agent computed the same thing."""
        looped = self.fixed_batch is not None and n > self.fixed_batch
        parts: list[Any] = list(result) if looped and isinstance(result, list) else [result]
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.out_names}
        for part in parts:
            for name, value in zip(self.out_names, part, strict=True):
                if name in self.maps:
                    keys = sorted(value[0])
                    out[name].append(np.array([[row[k] for k in keys] for row in value], dtype=np.float32))
                else:
                    out[name].append(np.asarray(value))
        return {k: np.concatenate(v) for k, v in out.items()}


class LiteRTRaw:
    """A bare LiteRT interpreter, created like the agent's LiteRT backend creates its own."""

    def __init__(self, path: Path, manifest: Manifest, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        self.interp.allocate_tensors()
        ins = {d["name"]: d for d in self.interp.get_input_details()}
        outs = {d["name"]: d for d in self.interp.get_output_details()}
        self.inputs = [ins[t.name] for t in manifest.inputs]
        self.outputs = [outs[t.name] for t in manifest.outputs]
        self.out_names = [t.name for t in manifest.outputs]
        dynamic = all(len(d["shape_signature"]) and d["shape_signature"][0] == -1 for d in self.inputs)
        self.fixed_batch: int | None = None if dynamic else max(1, int(self.inputs[0]["shape"][0]))
        self.quantized_io = any(self._quantized(d) for d in self.inputs + self.outputs)

    @staticmethod
    def _quantized(detail: Mapping[str, Any]) -> bool:
        scale = detail.get("quantization", (0.0, 0))[0]
        return bool(scale != 0.0 and np.issubdtype(np.dtype(detail["dtype"]), np.integer))

    def _native(self, x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
        """The input as the interpreter takes it (quantized once, outside the timed call)."""
        dtype = np.dtype(detail["dtype"])
        if self._quantized(detail):
            scale, zero_point = detail["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
        return np.ascontiguousarray(x.astype(dtype))

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Call:
        """The raw call for this batch: resize once (dynamic batch) or one invoke per slice."""
        return self._bind(inputs, convert=False)

    def bind_converting(self, inputs: Mapping[str, np.ndarray]) -> Call:
        """The raw call doing, inside the timed call, the float <-> integer conversion the agent must
        do for a quantized model: the input quantized and the outputs dequantized with the plain numpy
        recipe (``_native`` / ``_dequantize``), so that agent / this = the runtime layer's overhead on
        the same function (float in, float out)."""
        return self._bind(inputs, convert=True)

    @classmethod
    def _dequantize(cls, y: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
        if not cls._quantized(detail):
            return y
        scale, zero_point = detail["quantization"]
        return (y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)

    def _bind(self, inputs: Mapping[str, np.ndarray], *, convert: bool) -> Call:
        interp, n = self.interp, _batch(inputs)
        if self.fixed_batch is None:
            for d in self.inputs:
                interp.resize_tensor_input(d["index"], [n, *d["shape_signature"][1:]], strict=False)
            interp.allocate_tensors()
        step = self.fixed_batch or n
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        out_idx = [int(d["index"]) for d in self.outputs]
        if convert:
            slices = [
                [
                    (int(d["index"]), d, np.ascontiguousarray(inputs[d["name"]][i : i + step]))
                    for d in self.inputs
                ]
                for i in range(0, n, step)
            ]
            outs = [(int(d["index"]), d) for d in self.outputs]
            native, dequantize = self._native, self._dequantize

            def converting() -> object:
                results = []
                for chunk in slices:
                    for index, detail, x in chunk:
                        set_tensor(index, native(x, detail))
                    invoke()
                    results.append([dequantize(get_tensor(i), d) for i, d in outs])
                return results

            return converting
        chunks = [
            [(int(d["index"]), self._native(inputs[d["name"]][i : i + step], d)) for d in self.inputs]
            for i in range(0, n, step)
        ]

        def call() -> object:
            results = []
            for chunk in chunks:
                for index, arr in chunk:
                    set_tensor(index, arr)
                invoke()
                results.append([get_tensor(i) for i in out_idx])
            return results

        return call

    def arrays(self, result: object, n: int) -> dict[str, np.ndarray]:
        assert isinstance(result, list)
        out: dict[str, np.ndarray] = {}
        for j, (name, d) in enumerate(zip(self.out_names, self.outputs, strict=True)):
            arr = np.concatenate([part[j] for part in result])
            if self._quantized(d):
                scale, zero_point = d["quantization"]
                arr = (arr.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
            out[name] = arr
        return out


RawRunner = OnnxRaw | LiteRTRaw


def make_raw(manifest: Manifest, pkg: Path, threads: int) -> RawRunner:
    if manifest.backend == "onnx":
        return OnnxRaw(pkg / manifest.file, manifest, threads)
    return LiteRTRaw(pkg / manifest.file, manifest, threads)


# -- timing ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Samples:
    ns: list[np.ndarray]  # one array per call, in the order given
    rounds: int
    block: int


def measure(calls_: Sequence[Call], budget_s: float, cfg: Budget) -> Samples:
    """Time the calls alternately: rounds of a block of each call in turn (A A A B B B C C C ...).

    The warm-up (which also settles arena allocation and LiteRT resizes) estimates the cost of one
    call of each; the number of calls is then what fits ``budget_s``, within the budget's limits.
    """
    clock = time.perf_counter_ns
    est: list[list[int]] = [[] for _ in calls_]
    stop = clock() + int(cfg.warmup_s * 1e9)
    while len(est[0]) < cfg.min_warmup or clock() < stop:
        for i, call in enumerate(calls_):
            t0 = clock()
            call()
            est[i].append(clock() - t0)
    round_ns = max(1.0, float(sum(np.median(e) for e in est)))
    calls = min(cfg.max_calls, max(cfg.min_calls, int(budget_s * 1e9 / round_ns)))
    block = max(1, min(25, calls // 20))
    rounds = math.ceil(calls / block)
    ns = [np.empty(rounds * block, dtype=np.int64) for _ in calls_]
    gc.collect()
    k = 0
    for _ in range(rounds):
        for call, out in zip(calls_, ns, strict=True):
            for j in range(k, k + block):
                t0 = clock()
                call()
                out[j] = clock() - t0
        k += block
    return Samples(ns, rounds, block)


def _stats(ns: np.ndarray, rows: int) -> dict[str, float]:
    ms = ns / 1e6
    p50 = float(np.median(ms))
    return {
        "p50_ms": p50,
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "rows_per_s": rows / (p50 / 1e3),
        "calls": int(ns.size),
    }
