"""A compute-heavy CNN for the serving benchmark, with random weights, as a model package.

The graph is built with the ``onnx`` package's ``helper`` and ``numpy_helper`` (the ``bench``
extra, also in ``dev``; no torch) and checked with ``onnx.checker``; numpy makes the weights,
onnxruntime checks that it loads and records the golden sample.

    input  "input"  float32 [N, 3, 32, 32]
    Conv 3->C 3x3, Relu, Conv C->C 3x3, Relu, MaxPool 2
    Conv C->2C 3x3, Relu, Conv 2C->2C 3x3, Relu, MaxPool 2
    Conv 2C->4C 3x3, Relu, GlobalAveragePool, Flatten, Gemm 4C->10
    output "logits" float32 [N, 10]

With the default width C = 64 that is about 230 MFLOP per image: 1-3 ms per inference on one
thread of a current x86 core (``python bench/heavy_model.py`` prints the time here; 1.6 ms on
the Xeon this was written on, at every batch size from 1 to 64).
``build_package(dest)`` writes ``dest/heavy_cnn/1/{heavy_cnn.onnx, manifest.json, golden.npz}``,
a package the model store loads like any other (sha256 checked, golden self-test).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NAME = "heavy_cnn"
VERSION = "1"
FILE = "heavy_cnn.onnx"
INPUT = "input"
OUTPUT = "logits"
CHANNELS, SIZE = 3, 32
CLASSES = 10
DEFAULT_WIDTH = 64
SEED = 7
OPSET = 17
IR_VERSION = 8
GOLDEN_ATOL = 1e-3
BATCHING = {"enabled": True, "max_batch_size": 64, "max_queue_delay_ms": 2.0}


def build_onnx(width: int = DEFAULT_WIDTH, seed: int = SEED) -> bytes:
    """The serialized ModelProto; He-initialised random weights, small random biases."""
    import onnx  # the bench extra: only building the model needs it
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = INPUT

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> None:
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs))

    def conv(cin: int, cout: int, idx: int) -> None:
        nonlocal x
        w = rng.normal(0.0, np.sqrt(2.0 / (cin * 9)), size=(cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0.0, 0.01, size=(cout,)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{idx}"), numpy_helper.from_array(b, f"b{idx}")])
        node("Conv", [x, f"w{idx}", f"b{idx}"], f"conv{idx}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        node("Relu", [f"conv{idx}"], f"relu{idx}")
        x = f"relu{idx}"

    def pool(idx: int) -> None:
        nonlocal x
        node("MaxPool", [x], f"pool{idx}", kernel_shape=[2, 2], strides=[2, 2])
        x = f"pool{idx}"

    c = width
    conv(CHANNELS, c, 1)
    conv(c, c, 2)
    pool(1)
    conv(c, 2 * c, 3)
    conv(2 * c, 2 * c, 4)
    pool(2)
    conv(2 * c, 4 * c, 5)
    node("GlobalAveragePool", [x], "gap")
    node("Flatten", ["gap"], "flat", axis=1)
    fc_w = rng.normal(0.0, np.sqrt(1.0 / (4 * c)), size=(CLASSES, 4 * c)).astype(np.float32)
    fc_b = rng.normal(0.0, 0.01, size=(CLASSES,)).astype(np.float32)
    inits.extend([numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")])
    node("Gemm", ["flat", "fc_w", "fc_b"], OUTPUT, transB=1)
    graph = helper.make_graph(
        nodes,
        f"heavy_cnn_w{width}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="edge-agent bench/heavy_model.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def sample_inputs(n: int, seed: int = SEED + 1) -> np.ndarray:
    """Inputs the benchmark sends: standard-normal images, float32 [n, 3, 32, 32]."""
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, SIZE, SIZE)).astype(np.float32)


def _session(path: Path) -> object:
    from edge_agent.runtime.backends.onnx import load_ort

    ort = load_ort()  # as the agent imports it: telemetry off

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def build_package(root: Path, width: int = DEFAULT_WIDTH) -> Path:
    """Write ``root/heavy_cnn/1/`` (model, golden.npz, manifest.json); return the package dir."""
    from edge_agent.runtime.package import (
        Manifest,
        read_manifest,
        save_golden,
        sha256_file,
        verify_files,
        write_manifest,
    )

    pkg = root / NAME / VERSION
    pkg.mkdir(parents=True, exist_ok=True)
    model_path = pkg / FILE
    model_path.write_bytes(build_onnx(width))
    golden_in = sample_inputs(4, seed=SEED + 2)
    session = _session(model_path)
    (golden_out,) = session.run([OUTPUT], {INPUT: golden_in})  # type: ignore[attr-defined]
    golden_sha = save_golden(pkg, {INPUT: golden_in}, {OUTPUT: golden_out})
    manifest = Manifest.model_validate(
        {
            "name": NAME,
            "version": VERSION,
            "description": f"Benchmark-only CNN with random weights (width {width}; about 230 MFLOP per "
            "image at width 64); its answers mean nothing, its cost is the point.",
            "backend": "onnx",
            "task": "classification",
            "file": FILE,
            "sha256": sha256_file(model_path),
            "inputs": [{"name": INPUT, "dtype": "float32", "shape": [None, CHANNELS, SIZE, SIZE]}],
            "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": [None, CLASSES]}],
            "postprocessing": {"type": "classification", "output": OUTPUT, "apply_softmax": True},
            "labels": [f"class_{i}" for i in range(CLASSES)],
            "golden": {
                "sha256": golden_sha,
                "atol": GOLDEN_ATOL,
                "rtol": 1e-4,
                "tolerance_reason": "fp32 convolutions: different CPUs and batch sizes pick other GEMM "
                "kernels and summation orders; logits are of order 1-10, so 1e-3 is float noise.",
            },
            "batching": BATCHING,
            "source": "bench/heavy_model.py: random He-initialised weights, built with onnx.helper.",
            "license": "Apache-2.0",
        }
    )
    write_manifest(pkg, manifest)
    verify_files(pkg, read_manifest(pkg))
    return pkg


def time_one(path: Path, batch: int = 1, seconds: float = 1.0) -> float:
    """Median seconds of one ``session.run`` at ``batch`` rows, one thread."""
    session = _session(path)
    x = sample_inputs(batch)
    for _ in range(5):
        session.run([OUTPUT], {INPUT: x})  # type: ignore[attr-defined]
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        session.run([OUTPUT], {INPUT: x})  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: Sequence[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="channels of the first conv")
    p.add_argument("--out", type=Path, help="model store root to write the package into (default: temp)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="heavy-cnn-") as tmp:
        root = args.out or Path(tmp)
        pkg = build_package(root, args.width)
        for b in (1, 8, 32, 64):
            t = time_one(pkg / FILE, b)
            print(
                f"width {args.width} batch {b:>2}: {t * 1e3:8.3f} ms per call, {t * 1e3 / b:6.3f} ms per row"
            )
        print(f"package: {pkg}" + ("" if args.out else " (deleted)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
