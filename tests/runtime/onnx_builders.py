"""ONNX models the import tests build themselves (with the ``onnx`` package of the dev extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET, domains: tuple[str, ...] = ()) -> Path:
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="edge-agent-tests")
    model.ir_version = 8
    if not domains:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def dynamic_classifier(path: Path, seed: int = 7) -> tuple[Path, np.ndarray, np.ndarray]:
    """x [batch, 4] -> probs = softmax(x @ W + b) [batch, 3]; batch is a named dynamic dim."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _save(graph, path), w, b


def constant_yolo(path: Path, predictions: np.ndarray, size: int = 64) -> Path:
    """images [1, 3, size, size] -> output0 = ``predictions`` ([1, 4+C, A]) whatever the image.

    The output still depends on the input (0 x its mean), so nothing folds the graph away.
    """
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["P", "nothing"], ["output0"]),
        ],
        "yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(predictions.shape))],
        [
            numpy_helper.from_array(predictions.astype(np.float32), "P"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    return _save(graph, path)


def custom_op(path: Path) -> Path:
    """x [N, 4] -> com.example.Frobnicate(x): an operator onnxruntime has no kernel for."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return _save(graph, path, domains=("com.example",))


def unsupported_type(path: Path) -> Path:
    """A valid standard operator onnxruntime's CPU kernels lack for this type: Relu on int16 (opset 14)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu_int16")],
        "relu16",
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, ["batch", 4])],
    )
    return _save(graph, path, opset=14)


def constant_ssd(path: Path, boxes: np.ndarray, scores: np.ndarray, size: int = 64) -> Path:
    """image [1, size, size, 3] (NHWC) -> boxes [1, A, 4] and scores [1, A, C], whatever the image."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["Bx", "nothing"], ["boxes"]),
            helper.make_node("Add", ["Sc", "nothing"], ["scores"]),
        ],
        "ssd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, size, size, 3])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(boxes.shape)),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(scores.shape)),
        ],
        [
            numpy_helper.from_array(boxes.astype(np.float32), "Bx"),
            numpy_helper.from_array(scores.astype(np.float32), "Sc"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    return _save(graph, path)
