"""Model tools, measured: `models quantize` (fp32 vs int8) and `models bench` (vs the raw runtime)

One run, one table, one row per (model, batch size):

* fp32 and int8 size and median inference latency, as printed by ``edge-agent models quantize``
  (run as a process on a copy of the store, with its default 99 % agreement gate), and their
  ratio; top-1 agreement on the evaluation rows, and the gate's verdict: ``written`` or
  ``REFUSED``. A refused int8 is still measured: the command's JSON report holds its size,
  latency and agreement, and a second run with ``--threshold 0`` writes it so that the raw and
  bench columns can time it too;
* the raw runtime's median (an ``onnxruntime.InferenceSession.run`` loop this script makes itself,
  one intra-op thread, like the agent) next to ``models bench``'s infer p50 (``run_bench``, the
  command's own code, one thread, the same tensors), for the fp32 and the int8 version; raw and
  bench blocks alternate so machine noise hits both; the median over the pairs of bench/raw - 1
  is the bench's overhead (goal: under 5 %).

Models: names given with ``--models`` (fp32 ONNX packages), default digits and person_onnx
(the person detector's fp32 ONNX twin: ``person`` itself is TFLite, which ``models quantize``
does not take), else face_onnx as the detector's stand-in (said in the output). Data: digits
uses tests/data/digits_heldout.npz (150 rows calibrate, 300 evaluate, with labels); person_onnx
tests/data/people/calibration (56 images) and evaluation (42 other images), quantized with
``--fp32-tail 12`` (see QUANTIZE_FLAGS); other models their package's sample images
(calibration = evaluation).

    .venv/bin/python bench/model_tools.py                  # ~5 minutes
    .venv/bin/python bench/model_tools.py --models digits,person_onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_agent.runtime import bench  # noqa: E402
from edge_agent.runtime.package import load_golden  # noqa: E402
from edge_agent.runtime.store import ModelStore  # noqa: E402

MODELS = ROOT / "models"
HELDOUT = ROOT / "tests" / "data" / "digits_heldout.npz"
PEOPLE = ROOT / "tests" / "data" / "people"
DEFAULT_MODELS = ("digits", "person_onnx")
# per-model `models quantize` flags: the person detector's box and score heads keep float (without,
# int8 agrees on ~76 % of the evaluation images; see docs/model-packages.md)
QUANTIZE_FLAGS = {"person_onnx": ["--fp32-tail", "12"]}
STAND_IN = "face_onnx"
BATCHES = (1, 32)
TARGET_OVERHEAD = 0.05


def default_models() -> tuple[list[str], str]:
    bundled = ModelStore(MODELS, Path("/nonexistent/state.json")).names()
    chosen = [m for m in DEFAULT_MODELS if m in bundled]
    note = ""
    if "person_onnx" not in chosen and STAND_IN in bundled:
        chosen.append(STAND_IN)
        note = (
            f"the person detector is not bundled here: {STAND_IN} (BlazeFace, ONNX) stands in for a detector"
        )
    return chosen, note


def data_sets(store: ModelStore, name: str, work: Path) -> tuple[Path, Path]:
    """(calibration, evaluation) for ``name``."""
    if name == "digits":
        with np.load(HELDOUT) as d:
            x = (d["images"].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
            y = d["labels"]
        calib, ev = work / "digits_calib.npz", work / "digits_eval.npz"
        np.savez(calib, input=x[:150])
        np.savez(ev, input=x[150:], labels=y[150:])
        return calib, ev
    if name == "person_onnx":
        return PEOPLE / "calibration", PEOPLE / "evaluation"
    pkg = store.package_dir(name, store.active_version(name))
    if bench.sample_images(pkg):
        images = work / f"{name}_images"
        images.mkdir()
        for p in (pkg / "samples").iterdir():
            if p.suffix.lower() in bench.IMAGE_SUFFIXES:
                shutil.copy(p, images / p.name)
        return images, images
    m = store.manifest(name)
    inputs, _ = load_golden(pkg, m)
    path = work / f"{name}_golden.npz"
    np.savez(path, **inputs)  # type: ignore[arg-type]
    return path, path


EXIT_QUALITY = 7  # edge_agent.cli: under the agreement threshold, nothing written


def quantize(models_dir: Path, data_dir: Path, name: str, calib: Path, ev: Path) -> dict[str, Any]:
    """The gated run's report (``gate``: written / refused); a refused int8 is then written with
    ``--threshold 0`` (same settings, same data) so that it can be timed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(models_dir),
           "--data-dir", str(data_dir), "models", "quantize", name, "--calibration", str(calib),
           "--eval", str(ev), "--json", *QUANTIZE_FLAGS.get(name, [])]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    if out.returncode not in (0, EXIT_QUALITY):
        raise SystemExit(f"models quantize {name} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    report["gate"] = "written" if out.returncode == 0 else "REFUSED"
    report["flags"] = " ".join(QUANTIZE_FLAGS.get(name, []))
    if out.returncode == EXIT_QUALITY:
        again = subprocess.run([*cmd, "--threshold", "0"], capture_output=True, text=True, cwd=ROOT, env=env,
                               timeout=900)  # fmt: skip
        if again.returncode != 0:
            raise SystemExit(f"models quantize {name} --threshold 0 failed: {again.stderr.strip()[-2000:]}")
    return report


def raw_vs_bench(
    store: ModelStore, name: str, version: str, batch: int, reps: int, seconds: float
) -> dict[str, float]:
    """Medians over ``reps`` alternating blocks: raw session.run loop, then ``run_bench`` (one thread)."""
    from edge_agent.runtime.backends.onnx import load_ort

    ort = load_ort()  # as the agent imports it: telemetry off

    m = store.manifest(name, version)
    pkg = store.package_dir(name, version)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(pkg / m.file), so, providers=["CPUExecutionProvider"])
    golden, _ = load_golden(pkg, m)
    x = {k: np.ascontiguousarray(v[np.arange(batch) % v.shape[0]]) for k, v in golden.items()}
    step = 1 if m.inputs[0].shape[0] == 1 else batch
    outs = [t.name for t in m.outputs]

    def raw() -> None:
        for i in range(0, batch, step):
            sess.run(outs, {k: v[i : i + step] for k, v in x.items()})

    settings = bench.BenchSettings(batches=(batch,), threads=(1,), seconds=2 * seconds, tensors=True)
    raws, benches = [], []
    for _ in range(reps):
        for _ in range(3):
            raw()
        samples: list[int] = []
        deadline = time.perf_counter() + seconds
        while len(samples) < 10 or time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            raw()
            samples.append(time.perf_counter_ns() - t0)
        raws.append(float(np.median(samples)) / 1e6)
        fig = bench.run_bench(store, name, version, settings)
        benches.append(fig.rows[0].stages["infer"].p50_ms)
    # the overhead is the median of each rep's bench/raw: a rep's two blocks run back to back, so
    # load from other processes that drifts over the run cancels out of the pair
    ratio = float(np.median(np.asarray(benches) / np.asarray(raws)))
    r, b = float(np.median(raws)), float(np.median(benches))
    return {"raw_ms": round(r, 4), "bench_ms": round(b, 4), "overhead": round(ratio - 1, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--models", help="comma-separated fp32 ONNX model names (default: see the docstring)")
    ap.add_argument("--quick", action="store_true", help="short blocks (a smoke run; figures are noisy)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    names, note = default_models()
    if args.models:
        names, note = [n for n in args.models.split(",") if n], ""
    bundled = ModelStore(MODELS, Path("/nonexistent/state.json")).names()
    unknown = [n for n in names if n not in bundled]
    if unknown or not names:
        print(f"unknown model(s) {unknown or names}; bundled: {bundled}", file=sys.stderr)
        return 2
    reps, seconds = (2, 0.05) if args.quick else (9, 0.3)
    print(
        "command: " + shlex.join([Path(sys.executable).name, "bench/model_tools.py", *(argv or sys.argv[1:])])
    )
    if note:
        print(f"note: {note}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-model-tools-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        for name in names:
            shutil.copytree(MODELS / name, models_dir / name)
        store = ModelStore(models_dir, work / "data" / "store-state.json")
        for name in names:
            calib, ev = data_sets(store, name, work)
            q = quantize(models_dir, work / "data", name, calib, ev)
            for b in BATCHES:
                fp32 = raw_vs_bench(store, name, q["source_version"], b, reps, seconds)
                int8 = raw_vs_bench(store, name, q["version"], b, reps, seconds)
                rows.append({"model": name, "batch": b, "quantize": q, "fp32": fp32, "int8": int8})
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"note": note, "rows": rows}, indent=2))
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("model", "batch", "fp32 KiB", "int8 KiB", "size int8/fp32", "quantize fp32 ms",
            "quantize int8 ms", "latency int8/fp32", "agreement", "99 % gate", "raw fp32 ms", "bench fp32 ms",
            "bench overhead fp32", "raw int8 ms", "bench int8 ms", "bench overhead int8")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    worst = 0.0
    for r in rows:
        q, b = r["quantize"], str(r["batch"])
        f, i = q["latency_ms"]["fp32"][b], q["latency_ms"]["int8"][b]
        worst = max(worst, abs(r["fp32"]["overhead"]), abs(r["int8"]["overhead"]))
        cells = (
            r["model"], b, f"{q['size_bytes']['fp32'] / 1024:.1f}", f"{q['size_bytes']['int8'] / 1024:.1f}",
            f"{q['size_bytes']['int8'] / q['size_bytes']['fp32']:.2f}", f"{f:.4f}", f"{i:.4f}",
            f"{i / f:.2f}",
            f"{q['agreement']:.2%}", q["gate"], f"{r['fp32']['raw_ms']:.4f}", f"{r['fp32']['bench_ms']:.4f}",
            f"{r['fp32']['overhead']:+.1%}", f"{r['int8']['raw_ms']:.4f}", f"{r['int8']['bench_ms']:.4f}",
            f"{r['int8']['overhead']:+.1%}",
        )  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    for name in dict.fromkeys(r["model"] for r in rows):
        q = next(r["quantize"] for r in rows if r["model"] == name)
        flags = f" ({q['flags']})" if q["flags"] else ""
        print(
            f"{name}: int8 = {q['scheme']}{flags}; agreement {q['agreement']:.2%} on {q['evaluation']}: "
            f"{q['gate']} at the {q['threshold']:.0%} gate"
        )
    verdict = "within" if worst < TARGET_OVERHEAD else "OVER"
    print(
        f"bench overhead: largest |bench/raw - 1| = {worst:.1%}, {verdict} the {TARGET_OVERHEAD:.0%} target"
    )


if __name__ == "__main__":
    sys.exit(main())
