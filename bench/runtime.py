"""Runtime benchmark: raw onnxruntime / LiteRT calls versus the agent's runtime layer.

For every bundled model variant (one row each) it measures, in one run:

* batch-1 latency p50 / p99 of (a) the raw runtime call - an ``InferenceSession.run`` or
  LiteRT ``set_tensor`` + ``invoke`` + ``get_tensor`` on a session / interpreter this script
  creates itself with the agent's thread settings - and (b) ``Engine.predict(name, {input: x})``,
  which adds input validation, batch splitting, ZipMap conversion, (de)quantization and
  post-processing (top-k labels, BlazeFace decoding + NMS);
* batch-32 throughput of both, and the agent/raw ratio of the median batch-32 call time
  (target < 1.10: the runtime layer should add less than 10 % at batch 32).

Raw and agent calls alternate (a block of raw calls, then a block of agent calls, repeated)
so machine noise hits both equally; the table reports medians. The last line is the resident
memory of a fresh process holding every benchmarked model loaded through the Engine, next to
a bare ``python -c "import numpy"``.

    .venv/bin/python bench/runtime.py                 # all bundled models, 1-3 minutes
    .venv/bin/python bench/runtime.py --quick --models iris,face
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.engine import Engine, EngineOptions
from edge_agent.runtime.package import ImagePreprocess, Manifest, load_golden
from edge_agent.runtime.store import ModelStore

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
        import onnxruntime as ort

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
        interp, n = self.interp, _batch(inputs)
        if self.fixed_batch is None:
            for d in self.inputs:
                interp.resize_tensor_input(d["index"], [n, *d["shape_signature"][1:]], strict=False)
            interp.allocate_tensors()
        step = self.fixed_batch or n
        chunks = [
            [(int(d["index"]), self._native(inputs[d["name"]][i : i + step], d)) for d in self.inputs]
            for i in range(0, n, step)
        ]
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        out_idx = [int(d["index"]) for d in self.outputs]

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


# -- one model -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Row:
    name: str
    backend: str = ""
    task: str = ""
    size_kb: float = 0.0
    accuracy: float | None = None
    heldout_size: int | None = None
    fixed_batch: int | None = None
    zipmap: bool = False
    quantized_io: bool = False
    quantization: str = "none"
    load_ms: float = 0.0
    batch1: dict[str, dict[str, float]] = field(default_factory=dict)
    batch32: dict[str, dict[str, float]] = field(default_factory=dict)
    overhead_b1: float = 0.0
    overhead_b32: float = 0.0
    answers_b32: float = 0.0
    max_abs_diff: float = 0.0
    agrees: bool = True
    error: str | None = None


def bench_model(engine: Engine, name: str, threads: int, cfg: Budget, rng: np.random.Generator) -> Row:
    row = Row(name)
    t0 = time.perf_counter_ns()
    model = engine.model(name)  # verify + load + golden self-test, as in production
    row.load_ms = (time.perf_counter_ns() - t0) / 1e6
    m = model.manifest
    pkg = engine.store.package_dir(m.name, m.version)
    row.backend, row.task = m.backend, m.task
    row.size_kb = (pkg / m.file).stat().st_size / 1024
    row.quantization = m.quantization.scheme
    if m.metrics is not None:
        row.accuracy, row.heldout_size = m.metrics.heldout_accuracy, m.metrics.heldout_size
    row.zipmap = any(t.kind == "sequence_of_maps" for t in m.outputs)
    raw = make_raw(m, pkg, threads)
    row.fixed_batch, row.quantized_io = raw.fixed_batch, raw.quantized_io

    golden_in, _ = load_golden(pkg, m)
    worst = 0.0
    agrees = True
    for n, budget, slot in ((1, cfg.batch1_s, row.batch1), (BATCH, cfg.batch32_s, row.batch32)):
        inputs = make_inputs(m, pkg, golden_in, n, rng)
        raw_call = raw.bind(inputs)
        feeds = dict(inputs)

        def agent_call(feeds: dict[str, np.ndarray] = feeds) -> object:
            return engine.predict(name, feeds, answers=False)

        def answers_call(feeds: dict[str, np.ndarray] = feeds) -> object:
            return engine.predict(name, feeds)

        # Same inputs, same answers? (Checked once, untimed.)
        got = raw.arrays(raw_call(), n)
        pred = engine.predict(name, feeds)
        for out_name, want in got.items():
            have = pred.outputs[out_name]
            diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)), initial=0.0))
            worst = max(worst, diff)
            agrees = agrees and have.shape == want.shape and diff <= max(m.golden.atol, 1e-6) * 10
        samples = measure([raw_call, agent_call, answers_call], budget, cfg)
        slot["raw"] = _stats(samples.ns[0], n)
        slot["agent"] = _stats(samples.ns[1], n)
        slot["answers"] = _stats(samples.ns[2], n)
        slot["rounds"] = {"rounds": samples.rounds, "block": samples.block}
    row.max_abs_diff, row.agrees = worst, agrees
    row.overhead_b1 = row.batch1["agent"]["p50_ms"] / row.batch1["raw"]["p50_ms"]
    row.overhead_b32 = row.batch32["agent"]["p50_ms"] / row.batch32["raw"]["p50_ms"]
    row.answers_b32 = row.batch32["answers"]["p50_ms"] / row.batch32["raw"]["p50_ms"]
    return row


# -- memory ------------------------------------------------------------------------------------------
def proc_status_kb() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


_BARE_NUMPY = (
    "import json, numpy\n"
    "d = {}\n"
    "for line in open('/proc/self/status'):\n"
    "    k, _, v = line.partition(':')\n"
    "    if k in ('VmRSS', 'VmHWM'):\n"
    "        d[k] = int(v.split()[0])\n"
    "print(json.dumps(d))\n"
)


def rss_only(names: Sequence[str], threads: int) -> int:
    """``--rss-only``: load the models through a fresh Engine, print /proc status as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = _engine(Path(tmp), threads)
        errors: dict[str, str] = {}
        for name in names:
            try:
                engine.model(name)
            except EdgeAgentError as exc:
                errors[name] = exc.message
        print(json.dumps({**proc_status_kb(), "models": len(names) - len(errors), "errors": errors}))
    return 0


def measure_memory(names: Sequence[str], threads: int) -> dict[str, Any]:
    def run(cmd: list[str]) -> dict[str, Any]:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    script = str(Path(__file__).resolve())
    engine_cmd = [
        sys.executable,
        script,
        "--rss-only",
        "--models",
        ",".join(names),
        "--threads",
        str(threads),
    ]
    return {"engine": run(engine_cmd), "bare_numpy": run([sys.executable, "-c", _BARE_NUMPY])}


# -- report ------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": dist("onnxruntime"),
        "ai-edge-litert": dist("ai-edge-litert"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def header_lines(argv: Sequence[str], threads: int) -> list[str]:
    v = _versions()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"command: {shlex.join([sys.executable, *argv])}",
        f"python {v['python']}, numpy {v['numpy']}, onnxruntime {v['onnxruntime']}, "
        f"ai-edge-litert {v['ai-edge-litert']}",
        f"CPUs: {os.cpu_count()} ({affinity} usable), {_cpu_model()}, {platform.machine()}; "
        f"threads: intra-op {threads}, inter-op 1 (raw and agent)",
    ]


def _marks(row: Row) -> str:
    marks = ""
    if row.fixed_batch is not None:
        marks += "¹"
    if row.zipmap:
        marks += "²"
    if row.quantized_io:
        marks += "³"
    if row.task == "detection":
        marks += "⁴"
    return marks


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def table_lines(rows: Sequence[Row]) -> list[str]:
    head = [
        "model",
        "backend",
        "size KB",
        "held-out acc",
        "b1 p50 raw ms",
        "b1 p50 agent ms",
        "b1 p99 raw ms",
        "b1 p99 agent ms",
        "b32 raw rows/s",
        "b32 agent rows/s",
        "b32 agent/raw",
        "b32 +answers/raw",
    ]
    body: list[list[str]] = []
    for r in rows:
        if r.error is not None:
            body.append([r.name, r.backend or "-", "-", "-", *(["error"] * 8)])
            continue
        acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.1f}% (n={r.heldout_size})"
        ratio = f"{r.overhead_b32:.2f}"
        if r.overhead_b32 >= TARGET_OVERHEAD:
            ratio = f"**{ratio}**"
        b1, b32 = r.batch1, r.batch32
        body.append(
            [
                r.name + _marks(r),
                r.backend + (" int8" if r.quantization != "none" else ""),
                f"{r.size_kb:.1f}",
                acc,
                _ms(b1["raw"]["p50_ms"]),
                _ms(b1["agent"]["p50_ms"]),
                _ms(b1["raw"]["p99_ms"]),
                _ms(b1["agent"]["p99_ms"]),
                f"{b32['raw']['rows_per_s']:,.0f}",
                f"{b32['agent']['rows_per_s']:,.0f}",
                ratio,
                f"{r.answers_b32:.2f}",
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    left = {0, 1}

    def fmt(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i in left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return [fmt(head), "| " + " | ".join(rule) + " |", *(fmt(b) for b in body)]


def footnotes(rows: Sequence[Row], cfg: Budget, quick: bool) -> list[str]:
    ok = [r for r in rows if r.error is None]
    calls_b1 = sorted({int(r.batch1["raw"]["calls"]) for r in ok})
    calls_b32 = sorted({int(r.batch32["raw"]["calls"]) for r in ok})

    def span(v: list[int]) -> str:
        return "-" if not v else (str(v[0]) if v[0] == v[-1] else f"{v[0]}-{v[-1]}")

    lines = [
        "",
        f"Raw = the runtime called directly by this script (own session/interpreter, same thread "
        f"settings); agent = `Engine.predict(name, {{input: x}}, answers=False)`: the runtime layer "
        f"(validation, batch splitting, (de)quantization, ZipMap to array), output tensors; "
        f"+answers = `Engine.predict(name, {{input: x}})`, which also builds per-row answers (labels, "
        f"top-k dicts, decoded boxes). Same input arrays for all. Calls alternate in rounds "
        f"(a block of raw calls, then agent, then +answers); batch 1: {span(calls_b1)} calls each, "
        f"batch 32: {span(calls_b32)} calls each{' (--quick: numbers are rough)' if quick else ''}. "
        f"rows/s = 32 / median batch-32 call time; agent/raw = ratio of the median batch-32 call "
        f"times, target < {TARGET_OVERHEAD:.2f} (**bold**: missed). Size = the model file alone.",
    ]
    if any(r.fixed_batch is not None for r in ok):
        lines.append(
            "¹ Fixed batch of 1: the raw batch-32 path is a loop of 32 runs (`session.run` / "
            "`set_tensor`+`invoke`+`get_tensor`), which is what the agent does too (it splits the batch)."
        )
    if any(r.zipmap for r in ok):
        lines.append(
            "² ZipMap output (skl2onnx `sequence_of_maps`): raw = `session.run` returning the labels and "
            "a list of {class: probability} dicts; the agent also converts that list to a float32 "
            "[N, classes] array (`np.fromiter` over the dicts' values) and, for +answers, builds top-k "
            "results per row - real work, counted."
        )
    if any(r.quantized_io for r in ok):
        lines.append(
            "³ Integer (quantized) input/output tensors: the raw path is given an already-quantized int8 "
            "input and returns the int8 outputs; the agent quantizes the float input and dequantizes "
            "the outputs on every call."
        )
    if any(r.task == "detection" for r in ok):
        lines.append(
            "⁴ Detector: inputs are the package's preprocessed golden image plus noise, so each image "
            "has faces; agent time includes BlazeFace decoding + weighted NMS per image."
        )
    for r in ok:
        if not r.agrees:
            lines.append(
                f"WARNING: {r.name}: raw and agent outputs differ by up to {r.max_abs_diff:.3g} "
                "(not the same computation?)"
            )
    for r in rows:
        if r.error is not None:
            lines.append(f"ERROR: {r.name}: {r.error}")
    return lines


def _mib(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def memory_line(mem: Mapping[str, Any], names: Sequence[str], threads: int) -> str:
    eng, bare = mem["engine"], mem["bare_numpy"]
    if "error" in eng:
        engine_part = f"Engine process failed: {eng['error']}"
    else:
        failed = f" ({len(eng['errors'])} failed to load)" if eng.get("errors") else ""
        engine_part = (
            f"{eng['models']} of {len(names)} models loaded through the Engine{failed} "
            f"(fresh process, {threads} thread{'s' if threads > 1 else ''}): "
            f"VmRSS {_mib(eng['VmRSS'])}, peak VmHWM {_mib(eng['VmHWM'])}"
        )
    bare_part = (
        f"bare python + numpy: {bare['error']}"
        if "error" in bare
        else f"bare `python -c 'import numpy'`: VmRSS {_mib(bare['VmRSS'])}, VmHWM {_mib(bare['VmHWM'])}"
    )
    return f"Memory: {engine_part}; {bare_part}."


# -- main --------------------------------------------------------------------------------------------
def _engine(state_dir: Path, threads: int) -> Engine:
    # A state file in a temporary directory: the benchmark never touches the real store state.
    store = ModelStore(MODELS, state_dir / "store-state.json")
    return Engine(store, EngineOptions(backend=BackendOptions(intra_op_threads=threads, inter_op_threads=1)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a few iterations only (smoke test, < 20 s)")
    p.add_argument("--models", help="comma-separated model names (default: every bundled model)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, raw and agent (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bundled = ModelStore(MODELS, Path("/nonexistent/store-state.json")).names()
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else bundled
    unknown = [n for n in names if n not in bundled]
    if unknown or not names:
        print(f"unknown model(s) {unknown}; bundled: {', '.join(bundled)}", file=sys.stderr)
        return 2
    if args.rss_only:
        return rss_only(names, args.threads)

    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    header = header_lines([sys.argv[0], *argv], args.threads)
    print("\n".join(header), flush=True)
    rng = np.random.default_rng(SEED)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = _engine(Path(tmp), args.threads)
        try:
            for name in names:
                print(f"  measuring {name} ...", file=sys.stderr, flush=True)
                try:
                    rows.append(bench_model(engine, name, args.threads, cfg, rng))
                except Exception as exc:  # one broken package must not hide the others' numbers
                    rows.append(Row(name, error=f"{type(exc).__name__}: {exc}"))
        finally:
            engine.close()
    print("  measuring memory (fresh processes) ...", file=sys.stderr, flush=True)
    mem = measure_memory(names, args.threads)

    print()
    lines = [*table_lines(rows), *footnotes(rows, cfg, args.quick), "", memory_line(mem, names, args.threads)]
    print("\n".join(lines))
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)

    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": _versions(),
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(),
            "threads": {"intra_op": args.threads, "inter_op": 1},
            "quick": args.quick,
            "budget": asdict(cfg),
            "batch": BATCH,
            "target_overhead": TARGET_OVERHEAD,
            "elapsed_s": elapsed,
            "models": [asdict(r) for r in rows],
            "memory": mem,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.error is not None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
