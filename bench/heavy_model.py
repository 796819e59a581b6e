"""A compute-heavy CNN for the serving benchmark, with random weights, as a model package.

The network is written straight to the ONNX protobuf wire format (a few dozen lines of
varint / length-delimited encoding below), so building it needs neither torch nor the
``onnx`` package: numpy for the weights, onnxruntime to check it loads and to record the
golden sample.

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

# ONNX enums used here (onnx.proto: TensorProto.DataType, AttributeProto.AttributeType)
FLOAT = 1
ATTR_INT, ATTR_INTS = 2, 7


# -- protobuf wire format -------------------------------------------------------------------
def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 fields: two's complement, ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def _packed_ints(field: int, values: Sequence[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values))


# -- ONNX messages (field numbers from onnx.proto) -----------------------------------------------
def _tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims=1, data_type=2, name=8, raw_data=9."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    return _packed_ints(1, arr.shape) + _int(2, FLOAT) + _str(8, name) + _bytes(9, arr.tobytes())


def _attr_int(name: str, value: int) -> bytes:
    """AttributeProto: name=1, i=3, type=20."""
    return _str(1, name) + _int(3, value) + _int(20, ATTR_INT)


def _attr_ints(name: str, values: Sequence[int]) -> bytes:
    """AttributeProto: name=1, ints=8, type=20."""
    return _str(1, name) + _packed_ints(8, values) + _int(20, ATTR_INTS)


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], attrs: Sequence[bytes] = ()) -> bytes:
    """NodeProto: input=1, output=2, name=3, op_type=4, attribute=5."""
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, f"{op.lower()}_{outputs[0]}") + _str(4, op)
    return body + b"".join(_bytes(5, a) for a in attrs)


def _value_info(name: str, dims: Sequence[int | str]) -> bytes:
    """ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2}}}."""
    shape = b"".join(
        _bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims
    )  # TensorShapeProto.dim=1: Dimension{dim_value=1 | dim_param=2}
    tensor_type = _int(1, FLOAT) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def _model(nodes: list[bytes], initializers: list[bytes], graph_name: str) -> bytes:
    """ModelProto{ir_version=1, producer_name=2, graph=7, opset_import=8}; GraphProto{node=1,
    name=2, initializer=5, input=11, output=12}."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _str(2, graph_name)
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += _bytes(11, _value_info(INPUT, ["N", CHANNELS, SIZE, SIZE]))
    graph += _bytes(12, _value_info(OUTPUT, ["N", CLASSES]))
    opset = _str(1, "") + _int(2, OPSET)  # OperatorSetIdProto{domain=1, version=2}
    return (
        _int(1, IR_VERSION) + _str(2, "edge-agent bench/heavy_model.py") + _bytes(7, graph) + _bytes(8, opset)
    )


def build_onnx(width: int = DEFAULT_WIDTH, seed: int = SEED) -> bytes:
    """The serialized ModelProto; He-initialised random weights, small random biases."""
    rng = np.random.default_rng(seed)
    nodes: list[bytes] = []
    inits: list[bytes] = []
    x = INPUT

    def conv(cin: int, cout: int, idx: int) -> None:
        nonlocal x
        w = rng.normal(0.0, np.sqrt(2.0 / (cin * 9)), size=(cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0.0, 0.01, size=(cout,)).astype(np.float32)
        inits.extend([_tensor(f"w{idx}", w), _tensor(f"b{idx}", b)])
        attrs = [_attr_ints("kernel_shape", [3, 3]), _attr_ints("pads", [1, 1, 1, 1])]
        nodes.append(_node("Conv", [x, f"w{idx}", f"b{idx}"], [f"conv{idx}"], attrs))
        nodes.append(_node("Relu", [f"conv{idx}"], [f"relu{idx}"]))
        x = f"relu{idx}"

    def pool(idx: int) -> None:
        nonlocal x
        attrs = [_attr_ints("kernel_shape", [2, 2]), _attr_ints("strides", [2, 2])]
        nodes.append(_node("MaxPool", [x], [f"pool{idx}"], attrs))
        x = f"pool{idx}"

    c = width
    conv(CHANNELS, c, 1)
    conv(c, c, 2)
    pool(1)
    conv(c, 2 * c, 3)
    conv(2 * c, 2 * c, 4)
    pool(2)
    conv(2 * c, 4 * c, 5)
    nodes.append(_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(_node("Flatten", ["gap"], ["flat"], [_attr_int("axis", 1)]))
    fc_w = rng.normal(0.0, np.sqrt(1.0 / (4 * c)), size=(CLASSES, 4 * c)).astype(np.float32)
    fc_b = rng.normal(0.0, 0.01, size=(CLASSES,)).astype(np.float32)
    inits.extend([_tensor("fc_w", fc_w), _tensor("fc_b", fc_b)])
    nodes.append(_node("Gemm", ["flat", "fc_w", "fc_b"], [OUTPUT], [_attr_int("transB", 1)]))
    return _model(nodes, inits, f"heavy_cnn_w{width}")


def sample_inputs(n: int, seed: int = SEED + 1) -> np.ndarray:
    """Inputs the benchmark sends: standard-normal images, float32 [n, 3, 32, 32]."""
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, SIZE, SIZE)).astype(np.float32)


def _session(path: Path) -> object:
    import onnxruntime as ort

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
            "source": "bench/heavy_model.py: random He-initialised weights, protobuf written directly.",
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
