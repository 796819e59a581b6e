"""Runtime benchmark (bench/runtime.py): one model measured raw and through the Engine, and the
resident memory of the loaded models."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# -- one model -----------------------------------------------------------------------------------------
from bench.runtime_raw import BATCH, MODELS, Budget, LiteRTRaw, _stats, make_inputs, make_raw, measure
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.engine import Engine, EngineOptions
from edge_agent.runtime.package import load_golden
from edge_agent.runtime.store import ModelStore


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
    overhead_conv_b32: float | None = None  # agent / raw with the float<->int conversion (³ rows)
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
        calls = [raw_call, agent_call, answers_call]
        if isinstance(raw, LiteRTRaw) and raw.quantized_io:
            conv_call = raw.bind_converting(inputs)
            conv = raw.arrays(raw_call(), n)  # the conversion gives what raw + arrays() gives
            for out_name, part in zip(raw.out_names, conv_call()[0], strict=True):  # type: ignore[index]
                agrees = agrees and bool(np.array_equal(part, conv[out_name][: len(part)]))
            calls.append(conv_call)
        samples = measure(calls, budget, cfg)
        slot["raw"] = _stats(samples.ns[0], n)
        slot["agent"] = _stats(samples.ns[1], n)
        slot["answers"] = _stats(samples.ns[2], n)
        if len(calls) == 4:
            slot["raw_conv"] = _stats(samples.ns[3], n)
        slot["rounds"] = {"rounds": samples.rounds, "block": samples.block}
    row.max_abs_diff, row.agrees = worst, agrees
    row.overhead_b1 = row.batch1["agent"]["p50_ms"] / row.batch1["raw"]["p50_ms"]
    row.overhead_b32 = row.batch32["agent"]["p50_ms"] / row.batch32["raw"]["p50_ms"]
    row.answers_b32 = row.batch32["answers"]["p50_ms"] / row.batch32["raw"]["p50_ms"]
    if "raw_conv" in row.batch32:
        row.overhead_conv_b32 = row.batch32["agent"]["p50_ms"] / row.batch32["raw_conv"]["p50_ms"]
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
        engine = new_engine(Path(tmp), threads)
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

    script = str(Path(__file__).resolve().with_name("runtime.py"))  # its --rss-only mode
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


def new_engine(state_dir: Path, threads: int) -> Engine:
    # A state file in a temporary directory: the benchmark never touches the real store state.
    store = ModelStore(MODELS, state_dir / "store-state.json")
    return Engine(store, EngineOptions(backend=BackendOptions(intra_op_threads=threads, inter_op_threads=1)))
