"""What a bare model file says about itself, read by the backend that will run it.

``read_signature(path)`` tells an ONNX file from a TFLite one by content (a
TFLite flatbuffer carries ``TFL3`` at byte 4; ONNX is a protobuf whose
top-level fields are walked without the ``onnx`` package, which finds a
truncated file), then opens it with onnxruntime or LiteRT exactly as serving
will, and returns names, element types, shapes (``None`` for a dynamic
dimension) and, for TFLite, each tensor's quantization scale and zero point.

Everything that goes wrong is an :class:`ImportRejected` saying what the file
is and what to do: an image or archive under a model's name, a truncated file,
an operator or opset the runtime cannot run (named).
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_agent.errors import BackendUnavailable, ImportRejected
from edge_agent.runtime._protobuf import ProtobufError, varint
from edge_agent.runtime.package import DType, TensorQuant

BackendName = Literal["onnx", "litert"]

_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (
        b"PK\x03\x04",
        "a zip archive (a model package? unpack it; a .pt/.keras file? export to ONNX or TFLite)",
    ),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a .npy array"),
    (b"\x80\x02", "a Python pickle (a PyTorch/scikit-learn file? export it to ONNX first)"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5? convert it to TFLite first)"),
)
# ModelProto field numbers (onnx.proto): ir_version .. functions.
_ONNX_FIELDS = {1: "ir_version", 2: "producer_name", 3: "producer_version", 4: "domain", 5: "model_version",
                6: "doc_string", 7: "graph", 8: "opset_import", 14: "metadata_props", 20: "training_info",
                25: "functions"}  # fmt: skip
_ORT_TYPES: dict[str, DType] = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}  # fmt: skip
_NP_TYPES: dict[str, DType] = {
    "float32": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8",
    "int32": "int32", "int64": "int64", "bool": "bool",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: DType  # what the caller sees: float32 for a quantized TFLite tensor
    shape: list[int | None]
    kind: Literal["tensor", "sequence_of_maps"] = "tensor"
    quant: TensorQuant | None = None
    stored_dtype: str = ""  # the element type inside the model, e.g. int8


@dataclass(frozen=True, slots=True)
class Signature:
    backend: BackendName
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    runtime: str
    qdq: bool = False  # an ONNX graph with DequantizeLinear nodes (statically quantized, QDQ)


def sniff(path: Path) -> BackendName:
    """Which backend a file is for, from its bytes; ImportRejected when it is no model."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
        size = path.stat().st_size
    except OSError as exc:
        raise ImportRejected(f"cannot read {path}: {exc.strerror}", reason="unreadable") from None
    if size == 0:
        raise ImportRejected(f"{path.name} is empty (0 bytes); not a model", reason="not_a_model")
    if head[4:8] == b"TFL3":
        return "litert"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise ImportRejected(
                f"{path.name} is {what}, not a model; import an ONNX (.onnx) or TFLite (.tflite) file",
                reason="not_a_model",
            )
    with _mapped(path) as data:
        _walk_onnx(data, path.name)
    return "onnx"


def _mapped(path: Path) -> mmap.mmap:
    """The file's bytes without reading them into memory (a model can be hundreds of MB on a Pi)."""
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _varint(data: bytes | mmap.mmap, pos: int, name: str) -> tuple[int, int]:
    try:
        return varint(data, pos)
    except ProtobufError as exc:
        if exc.truncated:
            raise ImportRejected(
                f"{name} ends in the middle of a field after {len(data)} bytes: the file is truncated "
                f"(an incomplete download or copy?); copy it again",
                reason="truncated",
            ) from None
        raise ImportRejected(
            f"{name} is not an ONNX model (unreadable protobuf)", reason="not_a_model"
        ) from None


def _walk_onnx(data: bytes | mmap.mmap, name: str) -> None:
    """Walk ModelProto's top-level fields: not protobuf -> not ONNX; a field past the end -> truncated."""
    pos, seen = 0, set()
    not_onnx = ImportRejected(
        f"{name} is neither a TFLite nor an ONNX model (its bytes are not an ONNX protobuf); "
        f"import an .onnx or .tflite file",
        reason="not_a_model",
    )
    while pos < len(data):
        tag, pos = _varint(data, pos, name)
        field_no, wire = tag >> 3, tag & 7
        if field_no not in _ONNX_FIELDS:
            raise not_onnx
        if wire == 0:
            _, pos = _varint(data, pos, name)
        elif wire == 2:
            length, pos = _varint(data, pos, name)
            if pos + length > len(data):
                raise ImportRejected(
                    f"{name} is truncated: its {_ONNX_FIELDS[field_no]} needs {pos + length} bytes but the "
                    f"file has {len(data)} (an incomplete download or copy?); copy it again",
                    reason="truncated",
                )
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise not_onnx
        seen.add(field_no)
    if 7 not in seen:
        raise ImportRejected(f"{name} holds no ONNX graph; not a model", reason="not_a_model")


def read_signature(path: Path) -> Signature:
    backend = sniff(path)
    if backend == "litert":
        return _litert_signature(path)
    sig = _onnx_signature(path)
    # an op type is stored as a plain string in each NodeProto: a byte search finds QDQ graphs
    # without the onnx package (a tensor named so could fool it; the tolerance rule then only loosens)
    with _mapped(path) as data:
        qdq = data.find(b"DequantizeLinear") != -1
    return Signature(sig.backend, sig.inputs, sig.outputs, sig.runtime, qdq=qdq)


# -- onnxruntime -------------------------------------------------------------------------------
_ORT_OP = (
    re.compile(r"Could not find an implementation for (\S+?)\((\d+)\) node with name '([^']*)'"),
    re.compile(r"(?:Fatal error: )?([\w.]*:?\w+)\((-?\d+)\) is not a registered function/op"),
    re.compile(r"No opset import for domain '([^']*)'"),
)


def _ort_error(name: str, msg: str) -> ImportRejected:
    m = _ORT_OP[0].search(msg)
    if m:
        return ImportRejected(
            f"{name}: onnxruntime on this device cannot run operator {m.group(1)} (opset {m.group(2)}, "
            f"node {m.group(3)!r}) with these input types; re-export without it or with supported types",
            reason="unsupported_operator",
            operator=m.group(1),
        )
    m = _ORT_OP[1].search(msg)
    if m:
        return ImportRejected(
            f"{name}: onnxruntime does not know operator {m.group(1)}; it is a custom or unregistered "
            f"op: re-export the model with standard ONNX operators",
            reason="unsupported_operator",
            operator=m.group(1),
        )
    m = re.search(
        r"[Oo]pset (\d+) is under development|Unsupported model IR version|opset \d+ .*not supported", msg
    )
    if m:
        return ImportRejected(
            f"{name}: this onnxruntime cannot run the model's opset/IR version ({msg.strip()[:300]}); "
            f"export with an older opset",
            reason="unsupported_opset",
        )
    if "INVALID_PROTOBUF" in msg or "Protobuf parsing failed" in msg:
        return ImportRejected(f"{name} is not a valid ONNX model: {msg.strip()[:300]}", reason="not_a_model")
    return ImportRejected(f"{name}: onnxruntime cannot load it: {msg.strip()[:400]}", reason="load_failed")


def _ort_shape(shape: Any) -> list[int | None]:
    return [d if isinstance(d, int) and d >= 0 else None for d in (shape or [])]


def _onnx_tensor(arg: Any, name: str) -> TensorInfo:
    t = str(arg.type)
    if t in _ORT_TYPES:
        return TensorInfo(arg.name, _ORT_TYPES[t], _ort_shape(arg.shape), stored_dtype=t)
    if t.startswith("seq(map("):  # skl2onnx ZipMap: the backend turns it into [N, classes] float32
        return TensorInfo(arg.name, "float32", [None, None], "sequence_of_maps", stored_dtype=t)
    raise ImportRejected(
        f"{name}: tensor {arg.name!r} has type {t}, which the agent cannot pass; supported: "
        f"{sorted(_ORT_TYPES)} and skl2onnx's sequence of maps",
        reason="unsupported_type",
    )


def _onnx_signature(path: Path) -> Signature:
    from edge_agent.runtime.backends.onnx import load_ort

    try:
        ort = load_ort()
    except BackendUnavailable as exc:
        raise ImportRejected(exc.message, reason="backend_unavailable") from None
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise _ort_error(path.name, str(exc)) from None
    inputs = [_onnx_tensor(a, path.name) for a in sess.get_inputs()]
    outputs = [_onnx_tensor(a, path.name) for a in sess.get_outputs()]
    return Signature("onnx", inputs, outputs, f"onnxruntime {ort.__version__}")


# -- LiteRT ------------------------------------------------------------------------------------
def _litert_tensor(d: dict[str, Any], name: str) -> TensorInfo:
    stored = np.dtype(d["dtype"]).name
    scale, zero_point = d.get("quantization", (0.0, 0))
    shape = [None if int(x) < 0 else int(x) for x in d.get("shape_signature", d["shape"])]
    if stored not in _NP_TYPES:
        raise ImportRejected(
            f"{name}: tensor {d['name']!r} has type {stored}, which the agent cannot pass",
            reason="unsupported_type",
        )
    if scale and np.issubdtype(np.dtype(stored), np.integer):  # the backend (de)quantizes it
        return TensorInfo(
            d["name"],
            "float32",
            shape,
            quant=TensorQuant(scale=float(scale), zero_point=int(zero_point)),
            stored_dtype=stored,
        )
    return TensorInfo(d["name"], _NP_TYPES[stored], shape, stored_dtype=stored)


def _litert_signature(path: Path) -> Signature:
    from edge_agent.runtime.backends.litert import _interpreter_class

    try:
        cls, runtime = _interpreter_class()
    except BackendUnavailable as exc:
        raise ImportRejected(exc.message, reason="backend_unavailable") from None
    try:
        interp = cls(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError with the C++ message
        msg = str(exc)
        m = re.search(r"unresolved custom op: (\w+)", msg) or re.search(
            r"Didn't find op for builtin opcode '(\w+)'", msg
        )
        if m:
            raise ImportRejected(
                f"{path.name}: LiteRT on this device cannot run operator {m.group(1)} (a custom op or one "
                f"this runtime lacks); re-convert the model with builtin ops only",
                reason="unsupported_operator",
                operator=m.group(1),
            ) from None
        raise ImportRejected(
            f"{path.name}: LiteRT cannot read it (truncated, or not a TFLite model?): {msg.strip()[:300]}",
            reason="load_failed",
        ) from None
    inputs = [_litert_tensor(d, path.name) for d in interp.get_input_details()]
    outputs = [_litert_tensor(d, path.name) for d in interp.get_output_details()]
    return Signature("litert", inputs, outputs, runtime)
