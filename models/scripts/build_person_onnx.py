#!/usr/bin/env python3
"""Build ``models/person_onnx/1``: the bundled person detector converted to fp32 ONNX.

``models quantize`` takes fp32 ONNX models; the person detector (``models/person/1``) is
MediaPipe's ``pose_detection.tflite``. This script makes its ONNX twin, as
``build_face.py`` made ``face_onnx`` from the face detector:

1. ``pip download --no-deps mediapipe==0.10.21`` (or ``--wheel``), extract
   ``mediapipe/modules/pose_detection/pose_detection.tflite`` and check its sha256;
2. in its own venv (TensorFlow never enters the project venv; the venv's pins are
   ``requirements-face.txt``): fold the model's 38 sparse fp16 weights (DENSIFY ->
   DEQUANTIZE chains, which tf2onnx cannot parse: "cannot reshape array of size 96 into
   shape (16,1,1,24)") into dense fp32 constants, computed by TensorFlow Lite's own kernels;
   convert with ``tf2onnx.convert --tflite`` (opset 13) and canonicalize the graph
   (content-ordered nodes, derived names) so the file is byte-reproducible;
3. check onnxruntime's outputs against LiteRT's on both sample photos (within the golden
   tolerance) and that both decode to the same people;
4. import the .onnx with :func:`edge_agent.runtime.importer.prepare` (the code behind
   ``edge-agent models import``) with the same preprocessing and ``person`` decoder preset as
   ``models/person/1``; the golden sample is its answer on astronaut.png;
5. write the package with the licence, a notice of the modification and both samples
   (astronaut.png and the two-person reference photo people.png).

Run with the project venv from the repo root::

    .venv/bin/python models/scripts/build_person_onnx.py [--wheel mediapipe-0.10.21-....whl]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.runtime.import_options import DecoderOptions, ImageOptions, ImportOptions  # noqa: E402
from edge_agent.runtime.importer import prepare, write_package  # noqa: E402
from edge_agent.runtime.package import sha256_file  # noqa: E402
from models.scripts.build_face import (  # noqa: E402
    CANONICALIZE_ONNX,
    convert_onnx,
    download_wheel,
    ensure_onnx_venv,
    extract,
    letterbox,
    run_tflite,
)
from models.scripts.build_person import (  # noqa: E402
    MP_VERSION,
    TFLITE_SHA256,
    WHEEL_LICENSE,
    WHEEL_MEMBER,
)

ONNX_OPSET = 13
INPUT_SIZE = 224
SAMPLES = REPO / "models" / "person" / "1" / "samples"
PEOPLE = REPO / "tests" / "data" / "people" / "people.png"
PEOPLE_LICENSE = REPO / "tests" / "data" / "people" / "LICENSE.txt"
DESCRIPTION = (
    "Google MediaPipe BlazePose person detector (pose_detection.tflite) converted to ONNX (opset 13) "
    "with tf2onnx: the fp32 ONNX twin of models/person, for onnxruntime and `models quantize`. "
    "Input: RGB letterboxed to 224x224 (black padding), scaled to [-1, 1], NHWC float32, batch fixed "
    "at 1. Outputs: Identity [1, 2254, 12] (x_center, y_center, w, h, then x, y of 4 keypoints, in "
    "input pixels relative to the SSD anchors) and Identity_1 [1, 2254, 1] (score logits). Reported "
    "box: the BODY, a square centred on keypoint 0 (mid-hip) with half side = its distance to "
    "keypoint 1 (MediaPipe's pose ROI before its 1.25 margin), clipped to the image; the detector's "
    "own box (the face) is returned as detector_box."
)


# Run by the converter venv's python (TensorFlow). tf2onnx cannot read sparse tensors: every
# DEQUANTIZE fed by a DENSIFY of a constant becomes a constant holding the dense fp32 value that
# TFLite's reference kernels compute (no delegate); the two ops and the sparse buffer go.
DENSIFY_TFLITE = r"""
import sys

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

src, dst = sys.argv[1], sys.argv[2]
it = tf.lite.Interpreter(
    model_path=src,
    experimental_preserve_all_tensors=True,
    experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
)
it.allocate_tensors()
inp = it.get_input_details()[0]
it.set_tensor(inp["index"], np.zeros(inp["shape"], np.float32))
it.invoke()
model = flatbuffer_utils.read_model(src)
g = model.subgraphs[0]
codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
produced = {o: op for op in g.operators for o in op.outputs}
drop = []
for op in g.operators:
    if codes[op.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
        continue
    p = produced.get(op.inputs[0])
    if p is None or codes[p.opcodeIndex] != schema.BuiltinOperator.DENSIFY:
        continue
    sparse = g.tensors[p.inputs[0]]
    if sparse.sparsity is None or model.buffers[sparse.buffer].data is None:
        continue
    value = np.asarray(it.get_tensor(op.outputs[0]), np.float32)
    buf = schema.BufferT()
    buf.data = np.frombuffer(value.tobytes(), np.uint8)
    model.buffers[sparse.buffer].data = None
    model.buffers.append(buf)
    g.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
    sparse.buffer, sparse.sparsity = 0, None
    drop += [id(op), id(p)]
g.operators = [op for op in g.operators if id(op) not in drop]
flatbuffer_utils.write_model(model, dst)
print(len(drop) // 2)
"""


def log(msg: str) -> None:
    print(f"[build_person_onnx] {msg}", flush=True)


def model_input(image: Path) -> np.ndarray:
    rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x = letterbox(rgb, INPUT_SIZE).astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    return x[None].astype(np.float32)


def run_onnx(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))


def options(sample: Path, wheel_name: str, versions: str, diff: float) -> ImportOptions:
    return ImportOptions(
        name="person_onnx",
        version="1",
        postprocess="blazeface",
        labels=["person"],
        image=ImageOptions(input_range=(-1.0, 1.0), resize="letterbox"),
        decoder=DecoderOptions(anchors="person"),
        samples=[sample],
        description=DESCRIPTION,
        source=(
            f"Converted from `pip download --no-deps mediapipe=={MP_VERSION}` ({wheel_name}); member "
            f"{WHEEL_MEMBER} (sha256 {TFLITE_SHA256}): sparse fp16 weights densified to fp32 by TFLite's own "
            f"kernels, then `python -m tf2onnx.convert --tflite --opset "
            f"{ONNX_OPSET}` ({versions}), graph canonicalized; max |onnxruntime - LiteRT| on the two "
            f"sample photos {diff:.2e}. Packaged by models/scripts/build_person_onnx.py through "
            "edge_agent.runtime.importer (the code behind `edge-agent models import`)."
        ),
        license=(
            f"Apache-2.0 (Google MediaPipe, pose_detection.tflite from the mediapipe {MP_VERSION} wheel, "
            "converted to ONNX)"
        ),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="use this mediapipe wheel instead of downloading it")
    ap.add_argument("--onnx-venv", type=Path, default=Path("/work/venvs/face-onnx"))
    args = ap.parse_args()
    pkg = REPO / "models" / "person_onnx" / "1"
    with tempfile.TemporaryDirectory(prefix="build_person_onnx_") as tmp_s:
        tmp = Path(tmp_s)
        wheel = args.wheel or download_wheel(tmp)
        tflite = tmp / "pose_detection.tflite"
        extract(wheel, WHEEL_MEMBER, tflite)
        extract(wheel, WHEEL_LICENSE, tmp / "LICENSE")
        got = sha256_file(tflite)
        if got != TFLITE_SHA256:
            raise SystemExit(f"{WHEEL_MEMBER} has sha256 {got}, expected {TFLITE_SHA256}")
        py = ensure_onnx_venv(args.onnx_venv)
        dense, raw, onnx_path = tmp / "dense.tflite", tmp / "raw.onnx", tmp / "model.onnx"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        res = subprocess.run(
            [str(py), "-c", DENSIFY_TFLITE, str(tflite), str(dense)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if res.returncode != 0:
            raise SystemExit(f"folding the sparse weights failed:\n{res.stderr[-4000:]}")
        folded = int(res.stdout.split()[-1])
        log(f"folded {folded} DENSIFY -> DEQUANTIZE chains into dense fp32 constants")
        res = convert_onnx(py, dense, raw)
        if res.returncode == 0:
            res = subprocess.run(
                [str(py), "-c", CANONICALIZE_ONNX, str(raw), str(onnx_path)],
                capture_output=True,
                text=True,
                check=False,
            )
        if res.returncode != 0 or not onnx_path.is_file():
            raise SystemExit(f"conversion failed:\n{(res.stdout + res.stderr)[-4000:]}")
        diff = 0.0
        for image in (SAMPLES / "astronaut.png", PEOPLE):
            x = model_input(image)
            a, b = run_tflite(tflite, x), run_onnx(onnx_path, x)
            d = max(float(np.abs(a[k] - b[k]).max()) for k in a)
            log(f"{image.name}: max |onnxruntime - litert| = {d:.2e}")
            diff = max(diff, d)
        versions = subprocess.run(
            [str(py), "-c", "import tf2onnx, onnx, tensorflow as tf; "
             "print(f'tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, tensorflow {tf.__version__}')"],
            capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        ).stdout.strip()  # fmt: skip
        sample = Path(shutil.copyfile(SAMPLES / "astronaut.png", tmp / "astronaut.png"))
        prep = prepare(onnx_path, options(sample, wheel.name, versions, diff))
        if diff > prep.manifest.golden.atol:
            raise SystemExit(
                f"ONNX differs from LiteRT by {diff:.2e}, more than atol {prep.manifest.golden.atol}"
            )
        if pkg.exists():
            shutil.rmtree(pkg)
        (pkg / "samples").mkdir(parents=True)
        manifest = write_package(prep, pkg)
        shutil.copyfile(tmp / "LICENSE", pkg / "LICENSE.txt")
        notice = (
            (REPO / "models" / "person" / "1" / "NOTICE.txt")
            .read_text()
            .replace(
                "The model file is unmodified (renamed model.tflite).\n",
                f"Modified: its {folded} sparse fp16 weight tensors densified to fp32 (by TensorFlow "
                "Lite's own DENSIFY and DEQUANTIZE kernels), then converted from TFLite to ONNX "
                f"(opset {ONNX_OPSET}) "
                f"with {versions}; the TFLite ops were rewritten as ONNX ops, the other fp16 weights "
                "dequantized to fp32 and the graph canonicalized; "
                f"the computation is the same (outputs within {diff:.1e} of the TFLite model's on "
                "the samples).\n",
            )
        )
        (pkg / "NOTICE.txt").write_text(notice)
        shutil.copyfile(sample, pkg / "samples" / "astronaut.png")
        shutil.copyfile(PEOPLE, pkg / "samples" / "people.png")
        (pkg / "samples" / "LICENSE.txt").write_text(
            (SAMPLES / "LICENSE.txt").read_text() + "\n" + PEOPLE_LICENSE.read_text()
        )
    log(f"wrote {pkg.relative_to(REPO)}: golden atol {manifest.golden.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
