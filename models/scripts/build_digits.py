#!/usr/bin/env python3
"""Build the four ``digits`` model packages from scratch, seeded and offline.

A small CNN is trained in PyTorch on scikit-learn's bundled 8x8 digits data
set (no download), then exported four ways:

* ``digits``             ONNX fp32 (torch.onnx.export, dynamic batch)
* ``digits_int8``        ONNX int8, onnxruntime static quantization, QDQ, per-channel
* ``digits_tflite``      TFLite fp32 (Keras rebuild of the same net + TFLiteConverter)
* ``digits_tflite_int8`` TFLite full-integer int8 (int8 input and output tensors)

Every variant takes ``input`` float32 [N, 1, 8, 8] (pixels / 16, in [0, 1],
NCHW) and returns ``logits`` float32 [N, 10]; the int8 TFLite model's tensors
are int8 and the agent's LiteRT backend (de)quantizes them with the scale and
zero point recorded in the manifest.

Usage (from the repository root, with the build venv)::

    /work/venvs/digits/bin/pip install -r models/scripts/requirements-digits.txt
    /work/venvs/digits/bin/python models/scripts/build_digits.py --out models

Each package is written to ``<out>/<name>/1/`` with the model file,
``manifest.json`` (validated by ``edge_agent.runtime.package``), ``golden.npz``
and ``samples/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_agent.runtime.package import (  # noqa: E402
    Manifest,
    read_manifest,
    save_golden,
    sha256_file,
    verify_files,
    write_manifest,
)

SEED = 0
VERSION = "1"
SCRIPT = "models/scripts/build_digits.py"
DATASET = "sklearn digits held-out 25% (random_state=0)"
LICENSE = (
    "Trained here from scikit-learn's bundled digits dataset (BSD-3-Clause); model released under Apache-2.0"
)
LABELS = [str(i) for i in range(10)]
N_GOLDEN = 8
N_BATCH = 4
EPOCHS = 60
BATCH_SIZE = 32
LR = 2e-3

PREPROCESSING = {
    "input": "input",
    "color": "gray",
    "resize": {"width": 8, "height": 8, "mode": "stretch", "interpolation": "area"},
    "invert": False,
    "scale": 1.0 / 255.0,
    "offset": 0.0,
    "layout": "NCHW",
}
POSTPROCESSING = {"type": "classification", "output": "logits", "apply_softmax": True, "top_k": 3}
INPUTS = [{"name": "input", "dtype": "float32", "shape": [None, 1, 8, 8]}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": [None, 10]}]

FP32_ATOL = 1e-4
FP32_RTOL = 1e-4
FP32_REASON = (
    "fp32 logits: different CPU kernels (x86 AVX/FMA vs ARM NEON, XNNPACK, oneDNN, thread "
    "counts) reorder and fuse float sums, moving logits of magnitude ~10 by ~1e-6..1e-5; "
    "1e-4 absolute plus 1e-4 relative covers that with margin while still catching a wrong model."
)


def log(msg: str) -> None:
    print(f"[build_digits] {msg}", flush=True)


def seed_everything(seed: int = SEED) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- data


def load_data() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return {
        "x_train": np.ascontiguousarray(x_tr),
        "y_train": y_tr,
        "x_test": np.ascontiguousarray(x_te),
        "y_test": y_te,
    }


# --------------------------------------------------------------------------- torch


def make_torch_net():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """conv3x3(16)+ReLU+maxpool2 -> conv3x3(32)+ReLU+maxpool2 -> linear(128->10)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(32 * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return self.fc(torch.flatten(x, 1))

    return DigitsCNN()


def train(data: dict[str, np.ndarray]):
    import torch
    from torch import nn

    seed_everything()
    model = make_torch_net()
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{EPOCHS} loss {total / len(x):.4f}")
    model.eval()
    return model


def torch_predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- ONNX


def export_onnx(model, path: Path) -> None:
    import onnx
    import torch

    sample = torch.zeros(2, 1, 8, 8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (sample,),
            str(tmp_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
        m = onnx.load(str(tmp_path), load_external_data=True)
    # The exporter records per-node debug metadata (Python stack traces with absolute
    # paths and line numbers of this script); drop it so the file depends only on the
    # weights and graph, not on where or from which revision of the script it was built.
    for proto in (*m.graph.node, *m.graph.value_info, *m.graph.input, *m.graph.output, *m.graph.initializer):
        del proto.metadata_props[:]
    m.producer_name = "edge-agent build_digits.py"
    m.doc_string = "Digits CNN (sklearn 8x8 digits), input float32 [N,1,8,8] in [0,1], output logits [N,10]"
    # One self-contained file: every initializer inline, no external data.
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError("exporter left external data behind")
    onnx.checker.check_model(m, full_check=True)
    onnx.save_model(m, str(path), save_as_external_data=False)
    _check_onnx_io(path)


def _check_onnx_io(path: Path) -> None:
    import onnx

    m = onnx.load(str(path))
    (inp,) = m.graph.input
    (out,) = m.graph.output
    assert inp.name == "input" and out.name == "logits", (inp.name, out.name)
    dim0 = inp.type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "batch dimension must be dynamic"
    assert not any(path.parent.glob("*.data")), "unexpected external data file"


class _Calibration:
    """onnxruntime CalibrationDataReader over the training images, in batches of 1."""

    def __init__(self, x: np.ndarray) -> None:
        self._rows = iter([{"input": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._rows, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(fp32_path: Path, out_path: Path, x_calib: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_static(
            str(pre),
            str(out_path),
            _Calibration(x_calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    _check_onnx_io(out_path)


def onnx_output_scale(path: Path) -> float:
    """Scale of the DequantizeLinear that produces ``logits`` in a QDQ model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for node in m.graph.node:
        if "logits" in node.output:
            if node.op_type != "DequantizeLinear":
                raise RuntimeError(f"logits is produced by {node.op_type}, expected DequantizeLinear")
            return float(inits[node.input[1]])
    raise RuntimeError("no node produces logits")


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


# --------------------------------------------------------------------------- TFLite


def make_keras_net(torch_model):
    """The same network in Keras, NCHW [N,1,8,8] input, weights copied from torch."""
    import keras

    inp = keras.Input(shape=(1, 8, 8), name="input", dtype="float32")
    x = keras.layers.Permute((2, 3, 1), name="nchw_to_nhwc")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)  # NHWC order; fc weights are permuted to match
    out = keras.layers.Dense(10, name="logits")(x)
    km = keras.Model(inp, out, name="digits_cnn")

    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    km.get_layer("conv1").set_weights([sd["conv1.weight"].transpose(2, 3, 1, 0), sd["conv1.bias"]])
    km.get_layer("conv2").set_weights([sd["conv2.weight"].transpose(2, 3, 1, 0), sd["conv2.bias"]])
    # torch flattens [C=32,H=2,W=2]; Keras flattens [H,W,C]: reorder the fc input axis.
    w = sd["fc.weight"].reshape(10, 32, 2, 2).transpose(0, 2, 3, 1).reshape(10, 128)
    km.get_layer("logits").set_weights([w.T.copy(), sd["fc.bias"]])
    return km


def _saved_model(km, directory: str) -> None:
    """Export the Keras net as a SavedModel whose serving signature is input -> logits.

    (TFLiteConverter.from_concrete_functions on a Keras 3 model leaves resource
    variables unfrozen, so calibration fails with READ_VARIABLE; a SavedModel
    is frozen properly.)
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(km)
    archive.add_endpoint(
        "serving_default",
        lambda input: {"logits": km(input, training=False)},
        input_signature=[tf.TensorSpec([None, 1, 8, 8], tf.float32, name="input")],
    )
    archive.write_out(directory, verbose=False)


def convert_tflite(km, path: Path, x_calib: np.ndarray | None) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        _saved_model(km, tmp)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if x_calib is not None:

            def representative():
                for i in range(len(x_calib)):
                    yield {"input": x_calib[i : i + 1]}

            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        tf.random.set_seed(SEED)
        data = conv.convert()
    path.write_bytes(_rename_io(data))


def _rename_io(data: bytes) -> bytes:
    """Name the model's input tensor ``input`` and output tensor ``logits``.

    The agent matches manifest tensor names against the interpreter's tensor
    names, which the converter would otherwise call ``serving_default_input:0``
    and ``StatefulPartitionedCall:0``. The signature keys are already
    ``input``/``logits``; only the tensor names change.
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(data))
    (sg,) = model.subgraphs
    (i,) = sg.inputs
    (o,) = sg.outputs
    sg.tensors[i].name = b"input"
    sg.tensors[o].name = b"logits"
    return bytes(fbu.convert_object_to_bytearray(model))


def tflite_details(path: Path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    (i,) = it.get_input_details()
    (o,) = it.get_output_details()
    return i, o


def run_tflite(path: Path, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Run like the agent's LiteRT backend: resize to the batch, (de)quantize transparently."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    (i,) = it.get_input_details()
    (o,) = it.get_output_details()
    step = batch or len(x)
    it.resize_tensor_input(i["index"], [step, 1, 8, 8], strict=False)
    it.allocate_tensors()
    outs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        if len(chunk) != step:
            it.resize_tensor_input(i["index"], [len(chunk), 1, 8, 8], strict=False)
            it.allocate_tensors()
        it.set_tensor(i["index"], _quantize(chunk, i) if _is_quant(i) else chunk.astype(np.float32))
        it.invoke()
        y = it.get_tensor(o["index"])
        outs.append(_dequantize(y, o) if _is_quant(o) else y.copy())
    return np.concatenate(outs)


def _is_quant(d: dict) -> bool:
    return d["quantization"][0] != 0.0 and np.issubdtype(d["dtype"], np.integer)


def _quantize(x: np.ndarray, d: dict) -> np.ndarray:
    scale, zp = d["quantization"]
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(d["dtype"])


def _dequantize(q: np.ndarray, d: dict) -> np.ndarray:
    scale, zp = d["quantization"]
    return ((q.astype(np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)


# --------------------------------------------------------------------------- packages


def write_samples(pkg: Path, data: dict[str, np.ndarray]) -> None:
    from PIL import Image

    samples = pkg / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    x, y = data["x_test"], data["y_test"]
    seen: list[int] = []
    for idx in range(len(y)):
        label = int(y[idx])
        if label in seen:
            continue
        seen.append(label)
        img = np.rint(x[idx, 0] * 255.0).astype(np.uint8)  # x = sklearn / 16, so this is sklearn * 255/16
        img = np.kron(img, np.ones((4, 4), dtype=np.uint8))  # 8x8 -> 32x32, nearest
        Image.fromarray(img, mode="L").save(samples / f"digit_{label}.png", optimize=True)
        if len(seen) == 3:
            break
    batch = x[:N_BATCH].astype(np.float32)
    np.save(samples / "batch.npy", batch)
    (samples / "batch.json").write_text(json.dumps({"data": batch.tolist()}) + "\n")


def write_package(
    out: Path,
    name: str,
    *,
    backend: str,
    model_file: Path,
    description: str,
    golden_in: np.ndarray,
    golden_out: np.ndarray,
    atol: float,
    rtol: float,
    reason: str,
    quantization: dict,
    accuracy: float,
    heldout_size: int,
    extra: dict[str, float],
    source: str,
    data: dict[str, np.ndarray],
) -> Path:
    pkg = out / name / VERSION
    sha = sha256_file(pkg / model_file.name)
    golden_sha = save_golden(
        pkg, {"input": golden_in.astype(np.float32)}, {"logits": golden_out.astype(np.float32)}
    )
    write_samples(pkg, data)
    manifest = Manifest.model_validate(
        {
            "name": name,
            "version": VERSION,
            "description": description,
            "backend": backend,
            "task": "classification",
            "file": model_file.name,
            "sha256": sha,
            "inputs": INPUTS,
            "outputs": OUTPUTS,
            "preprocessing": PREPROCESSING,
            "postprocessing": POSTPROCESSING,
            "labels": LABELS,
            "quantization": quantization,
            "metrics": {
                "dataset": DATASET,
                "heldout_size": heldout_size,
                "heldout_accuracy": round(float(accuracy), 6),
                "extra": {k: round(float(v), 6) for k, v in extra.items()},
            },
            "golden": {"sha256": golden_sha, "atol": atol, "rtol": rtol, "tolerance_reason": reason},
            "source": source,
            "license": LICENSE,
        }
    )
    write_manifest(pkg, manifest)
    back = read_manifest(pkg)
    verify_files(pkg, back)
    return pkg


def fresh_dir(out: Path, name: str) -> Path:
    base = out / name
    if base.exists():
        shutil.rmtree(base)
    pkg = base / VERSION
    pkg.mkdir(parents=True)
    return pkg


def acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "models", help="models root (default: repo models/)")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()

    import onnxruntime
    import sklearn
    import tensorflow as tf
    import torch

    tf.random.set_seed(SEED)
    versions = (
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, tensorflow {tf.__version__}"
    )
    log(versions)

    data = load_data()
    x_tr, y_tr, x_te, y_te = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    n_te = len(y_te)
    golden_x = x_te[:N_GOLDEN]
    log(f"train {len(y_tr)}, held-out {n_te}")

    model = train(data)
    t_logits = torch_predict(model, x_te)
    torch_acc = acc(t_logits, y_te)
    log(f"torch held-out accuracy {torch_acc:.4f}")
    report: dict[str, dict[str, float]] = {}
    calib_desc = (
        f"all {len(y_tr)} training images of the sklearn digits split (test_size=0.25, random_state=0, "
        "stratify=y), one image per calibration step, scaled to [0,1]"
    )

    # ---- 1. ONNX fp32
    pkg = fresh_dir(out, "digits")
    onnx_fp32 = pkg / "digits.onnx"
    export_onnx(model, onnx_fp32)
    o_logits = run_onnx(onnx_fp32, x_te)
    o_acc = acc(o_logits, y_te)
    extra = {
        "torch_accuracy": torch_acc,
        "agreement_with_torch": agree(o_logits, t_logits),
        "max_abs_diff_vs_torch": float(np.abs(o_logits - t_logits).max()),
    }
    write_package(
        out,
        "digits",
        backend="onnx",
        model_file=onnx_fp32,
        description="Small CNN for 8x8 handwritten digits (sklearn digits), ONNX fp32.",
        golden_in=golden_x,
        golden_out=run_onnx(onnx_fp32, golden_x),
        atol=FP32_ATOL,
        rtol=FP32_RTOL,
        reason=FP32_REASON,
        quantization={"scheme": "none"},
        accuracy=o_acc,
        heldout_size=n_te,
        extra=extra,
        source=(
            f"Trained with PyTorch by {SCRIPT} (2x conv3x3 16/32 + ReLU + maxpool, linear 128->10; Adam, "
            f"{EPOCHS} epochs, seed {SEED}) and exported with torch.onnx.export (dynamo, opset 18, dynamic "
            f"batch). Built with {versions}."
        ),
        data=data,
    )
    report["digits"] = {"accuracy": o_acc, **extra}
    log(f"digits: {report['digits']}")

    # ---- 2. ONNX int8 (static, QDQ, per-channel)
    pkg = fresh_dir(out, "digits_int8")
    onnx_int8 = pkg / "digits_int8.onnx"
    quantize_onnx(onnx_fp32, onnx_int8, x_tr)
    q_logits = run_onnx(onnx_int8, x_te)
    q_acc = acc(q_logits, y_te)
    q_scale = onnx_output_scale(onnx_int8)
    extra = {
        "agreement_with_fp32": agree(q_logits, o_logits),
        "fp32_accuracy": o_acc,
        "max_abs_diff_vs_fp32": float(np.abs(q_logits - o_logits).max()),
        "output_scale": q_scale,
    }
    write_package(
        out,
        "digits_int8",
        backend="onnx",
        model_file=onnx_int8,
        description="Small CNN for 8x8 handwritten digits, ONNX int8 (static QDQ, per-channel weights).",
        golden_in=golden_x,
        golden_out=run_onnx(onnx_int8, golden_x),
        atol=round(1.5 * q_scale, 6),
        rtol=0.0,
        reason=(
            f"int8 QDQ model: logits come out of a DequantizeLinear with scale {q_scale:.6g}, so they "
            "move in whole steps of that scale. Integer kernels are exact, but a CPU whose EP fuses the "
            "QDQ pattern differently (QLinearConv vs float fallback, different requantization rounding) "
            "can tip one rounding tie; atol = 1.5 output steps allows one step plus float noise."
        ),
        quantization={"scheme": "int8_static_qdq", "per_channel": True, "calibration": calib_desc},
        accuracy=q_acc,
        heldout_size=n_te,
        extra=extra,
        source=(
            f"digits fp32 ONNX quantized by {SCRIPT} with onnxruntime.quantization.quantize_static "
            "(QuantFormat.QDQ, per_channel=True, int8 activations asymmetric / int8 weights symmetric, "
            f"MinMax calibration via a CalibrationDataReader) after quant_pre_process. Built with {versions}."
        ),
        data=data,
    )
    report["digits_int8"] = {"accuracy": q_acc, **extra}
    log(f"digits_int8: {report['digits_int8']}")

    # ---- 3. TFLite fp32
    km = make_keras_net(model)
    k_logits = km.predict(x_te, verbose=0)
    k_diff = float(np.abs(k_logits - t_logits).max())
    log(f"keras rebuild max |diff| vs torch {k_diff:.2e}")
    if k_diff > 1e-3:
        raise RuntimeError(f"Keras copy of the torch net disagrees with it (max diff {k_diff})")
    pkg = fresh_dir(out, "digits_tflite")
    tfl_fp32 = pkg / "digits.tflite"
    convert_tflite(km, tfl_fp32, None)
    tf_logits = run_tflite(tfl_fp32, x_te)
    tf_logits_b1 = run_tflite(tfl_fp32, x_te, batch=1)
    tf_acc = acc(tf_logits, y_te)
    extra = {
        "agreement_with_fp32": agree(tf_logits, o_logits),
        "max_abs_diff_vs_onnx_fp32": float(np.abs(tf_logits - o_logits).max()),
        "max_abs_diff_batch1_vs_batched": float(np.abs(tf_logits - tf_logits_b1).max()),
    }
    write_package(
        out,
        "digits_tflite",
        backend="litert",
        model_file=tfl_fp32,
        description="Small CNN for 8x8 handwritten digits, TFLite fp32 (NCHW input like the ONNX variants).",
        golden_in=golden_x,
        golden_out=run_tflite(tfl_fp32, golden_x),
        atol=FP32_ATOL,
        rtol=FP32_RTOL,
        reason=FP32_REASON,
        quantization={"scheme": "none"},
        accuracy=tf_acc,
        heldout_size=n_te,
        extra=extra,
        source=(
            f"The torch net trained by {SCRIPT}, rebuilt in Keras (Permute NCHW->NHWC, same convs, "
            "fc weights reordered for the NHWC flatten), weights copied, converted with "
            "tf.lite.TFLiteConverter (from_saved_model of a keras ExportArchive, batch dimension "
            "dynamic); tensors renamed input/logits. "
            f"Built with {versions}."
        ),
        data=data,
    )
    report["digits_tflite"] = {"accuracy": tf_acc, **extra}
    log(f"digits_tflite: {report['digits_tflite']}")

    # ---- 4. TFLite full-integer int8
    pkg = fresh_dir(out, "digits_tflite_int8")
    tfl_int8 = pkg / "digits_int8.tflite"
    convert_tflite(km, tfl_int8, x_tr)
    i_det, o_det = tflite_details(tfl_int8)
    if i_det["dtype"] != np.int8 or o_det["dtype"] != np.int8:
        raise RuntimeError(f"expected int8 I/O, got {i_det['dtype']} / {o_det['dtype']}")
    ti_logits = run_tflite(tfl_int8, x_te)
    ti_acc = acc(ti_logits, y_te)
    in_scale, in_zp = i_det["quantization"]
    out_scale, out_zp = o_det["quantization"]
    extra = {
        "agreement_with_fp32": agree(ti_logits, tf_logits),
        "agreement_with_onnx_fp32": agree(ti_logits, o_logits),
        "fp32_accuracy": tf_acc,
        "max_abs_diff_vs_fp32": float(np.abs(ti_logits - tf_logits).max()),
        "max_abs_diff_batch1_vs_batched": float(np.abs(ti_logits - run_tflite(tfl_int8, x_te, 1)).max()),
    }
    write_package(
        out,
        "digits_tflite_int8",
        backend="litert",
        model_file=tfl_int8,
        description=(
            "Small CNN for 8x8 handwritten digits, TFLite full-integer int8 (int8 input/output "
            "tensors; the agent quantizes/dequantizes with the recorded scale and zero point)."
        ),
        golden_in=golden_x,
        golden_out=run_tflite(tfl_int8, golden_x),
        atol=round(1.5 * float(out_scale), 6),
        rtol=0.0,
        reason=(
            f"full-integer int8 model: golden logits are the dequantized int8 outputs ((q - zp) * "
            f"{out_scale:.6g}) for float inputs quantized with the input scale/zero point, so they move in "
            "whole output steps. Integer kernels (reference vs XNNPACK/NEON, different requantization "
            "rounding) can tip one rounding tie; atol = 1.5 output steps allows one step plus float noise."
        ),
        quantization={
            "scheme": "int8_full_integer",
            "per_channel": True,
            "calibration": calib_desc + " (TFLiteConverter representative_dataset)",
            "tensors": {
                "input": {"scale": float(in_scale), "zero_point": int(in_zp)},
                "logits": {"scale": float(out_scale), "zero_point": int(out_zp)},
            },
        },
        accuracy=ti_acc,
        heldout_size=n_te,
        extra=extra,
        source=(
            f"The Keras rebuild of the torch net trained by {SCRIPT}, converted with "
            "tf.lite.TFLiteConverter: "
            "Optimize.DEFAULT, representative_dataset = training images, TFLITE_BUILTINS_INT8 only, "
            "inference_input_type = inference_output_type = int8 (per-channel conv/dense weights); batch "
            f"dimension dynamic; tensors renamed input/logits. Built with {versions}."
        ),
        data=data,
    )
    report["digits_tflite_int8"] = {"accuracy": ti_acc, **extra}
    log(f"digits_tflite_int8: {report['digits_tflite_int8']}")

    print(json.dumps({"torch_accuracy": torch_acc, "packages": report}, indent=2))
    failures = []
    if o_acc < 0.97:
        failures.append(f"fp32 accuracy {o_acc:.4f} < 0.97")
    for name, fp in (("digits_int8", o_acc), ("digits_tflite_int8", tf_acc)):
        if report[name]["accuracy"] < fp - 0.01:
            failures.append(f"{name} loses more than 1 point")
        if report[name]["agreement_with_fp32"] < 0.99:
            failures.append(f"{name} agrees with fp32 on < 99%")
    if report["digits_tflite"]["agreement_with_fp32"] < 0.99:
        failures.append("TFLite fp32 agrees with ONNX fp32 on < 99%")
    if failures:
        log("FAILED: " + "; ".join(failures))
        return 1
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
