#!/usr/bin/env python3
"""Build the face detector packages ``models/face/1`` (LiteRT) and ``models/face_onnx/1`` (ONNX).

Steps, end to end:

1. ``pip download --no-deps mediapipe==0.10.21`` (one cp311 manylinux wheel; it is
   only unzipped, never installed) and extract
   ``mediapipe/modules/face_detection/face_detection_short_range.tflite``,
   checking its sha256 against the one this script was written for.
2. Inspect it with ``ai_edge_litert`` (tensor names, shapes, dtypes).
3. Preprocess the sample image (astronaut.png) as the manifest says, run the
   model, check that the decoder finds the one face, and write golden.npz,
   manifest.json, LICENSE.txt, NOTICE.txt and samples/ for ``face/1``.
4. Convert the same .tflite to ONNX with tf2onnx in its own venv (TensorFlow
   stays out of the project venv), check onnxruntime's outputs against
   LiteRT's, and write ``face_onnx/1`` the same way. If the conversion fails,
   ``models/face_onnx/NOT_BUILT.md`` records why and the script exits 1.

Run with the project venv from the repo root::

    .venv/bin/python models/scripts/build_face.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.runtime.blazeface import FaceBox, decode  # noqa: E402
from edge_agent.runtime.package import (  # noqa: E402
    Anchors,
    Batching,
    Detection,
    Golden,
    ImagePreprocess,
    Manifest,
    Resize,
    TensorSpec,
    save_golden,
    sha256_file,
    write_manifest,
)

MP_VERSION = "0.10.21"
WHEEL_PLATFORM = "manylinux_2_28_x86_64"
WHEEL_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
WHEEL_LICENSE = f"mediapipe-{MP_VERSION}.dist-info/LICENSE"
TFLITE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
ONNX_OPSET = 13

INPUT_SIZE = 128
ATOL = 2e-3
TOLERANCE_REASON = (
    "fp32 CPU kernels differ between machines (XNNPACK/onnxruntime on x86 AVX vs ARM NEON: "
    "FMA use, accumulation order, im2col tiling). Outputs are box regressors in input pixels "
    "(|x| up to ~170) and score logits (|x| up to ~140); onnxruntime and LiteRT, two different "
    "kernel sets, differ by 1e-4 to 3e-4 on x86, and 2e-3 moves a box by 1.6e-5 of the "
    "image, far below anything that changes a detection."
)
LICENSE_TEXT = (
    "Apache-2.0 (Google MediaPipe, face_detection_short_range.tflite from the mediapipe 0.10.21 wheel)"
)
KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion"]
SAMPLE_LICENSE = """\
astronaut.png - 512x512 RGB portrait of NASA astronaut Eileen Collins.

Source: the scikit-image wheel, which ships it as skimage/data/astronaut.png
(copied here from the project's shared reference images).
Licence: public domain. It is a NASA photograph (a work of the US federal
government, not subject to copyright in the United States); scikit-image lists
it as "public domain" in skimage/data/README.txt.

Expected result with the face detector of this package: one face, score
~0.92, box about x 179-271, y 82-175 in the 512x512 image.
"""

# Run by the converter venv's python (it has onnx). tf2onnx names tensors and
# orders nodes differently from run to run; this rewrites the graph with nodes
# in a content-determined topological order and names derived from it, so the
# committed model.onnx is byte-reproducible. The computation is unchanged.
CANONICALIZE_ONNX = r"""
import hashlib
import sys

import onnx


def canonicalize(src: str, dst: str) -> None:
    model = onnx.load(src)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    init_hash = {}
    for n, t in inits.items():  # content only: tf2onnx's names vary run to run
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = ""
        init_hash[n] = hashlib.sha256(c.SerializeToString()).hexdigest()
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    rename = {i.name: i.name for i in g.input if i.name not in inits}
    for n in g.node:  # attribute order carries no meaning
        attrs = sorted(n.attribute, key=lambda a: a.name)
        copies = [onnx.AttributeProto() for _ in attrs]
        for c, a in zip(copies, attrs):
            c.CopyFrom(a)
        del n.attribute[:]
        n.attribute.extend(copies)
    pending = list(g.node)
    order = []
    while pending:
        ready = [n for n in pending if all(not x or x in rename or x in inits for x in n.input)]
        if not ready:
            raise SystemExit("graph is not a DAG")

        def key(n):
            ins = tuple(rename.get(x, "") if x not in inits else "w:" + init_hash[x] for x in n.input)
            attrs = tuple(a.SerializeToString() for a in n.attribute)
            return (n.op_type, n.domain, ins, attrs)

        ready.sort(key=key)
        node = ready[0]
        k = len(order)
        for j, x in enumerate(node.input):
            if x in inits and x not in rename:
                rename[x] = f"n{k}_w{j}"
        for j, y in enumerate(node.output):
            rename[y] = y if y in keep else f"n{k}_o{j}"
        pending.remove(node)
        order.append(node)
    nodes = []
    for k, n in enumerate(order):
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = f"n{k}_{n.op_type}"
        m.doc_string = ""
        del m.input[:]
        m.input.extend(rename.get(x, x) if x else "" for x in n.input)
        del m.output[:]
        m.output.extend(rename[y] for y in n.output)
        nodes.append(m)
    new_inits = []
    for name, t in sorted(inits.items(), key=lambda kv: rename.get(kv[0], kv[0])):
        if name not in rename:
            continue  # unused
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = rename[name]
        new_inits.append(c)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]
    g.doc_string = ""  # tf2onnx writes the (temporary) source path here
    onnx.checker.check_model(model)
    onnx.save(model, dst)



canonicalize(sys.argv[1], sys.argv[2])
"""

PREPROCESS = ImagePreprocess(
    input="input",
    color="rgb",
    resize=Resize(width=INPUT_SIZE, height=INPUT_SIZE, mode="letterbox", interpolation="linear"),
    scale=1.0 / 127.5,
    offset=-1.0,
    layout="NHWC",
)
POSTPROCESS = Detection(
    boxes_output="regressors",
    scores_output="classificators",
    anchors=Anchors(
        input_width=INPUT_SIZE,
        input_height=INPUT_SIZE,
        strides=[8, 16, 16, 16],
        min_scale=0.1484375,
        max_scale=0.75,
        anchor_offset_x=0.5,
        anchor_offset_y=0.5,
        aspect_ratios=[1.0],
        interpolated_scale_aspect_ratio=1.0,
        fixed_anchor_size=True,
    ),
    num_keypoints=6,
    box_scale=128.0,
    score_clip=100.0,
    min_score=0.5,
    iou_threshold=0.3,
    max_detections=100,
    keypoint_names=KEYPOINTS,
)
DESCRIPTION = (
    "Google MediaPipe BlazeFace short-range face detector (faces within ~2 m of the camera). "
    "Input: RGB letterboxed (aspect ratio kept, centred, as MediaPipe's ImageToTensorCalculator "
    "with keep_aspect_ratio does; padding black, i.e. -1 after scaling) to 128x128, linear "
    "interpolation, scaled to [-1, 1], NHWC float32. Outputs: regressors [1, 896, 16] "
    "(x_center, y_center, w, h, then x, y of 6 keypoints, in input pixels relative to the SSD "
    "anchors) and classificators [1, 896, 1] (score logits). Decode with "
    "edge_agent.runtime.blazeface: sigmoid, threshold 0.5, MediaPipe weighted NMS at IoU 0.3; "
    "boxes come out in normalized letterboxed-input coordinates. Batch size is fixed at 1."
)


def log(msg: str) -> None:
    print(f"[build_face] {msg}", flush=True)


def download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", f"mediapipe=={MP_VERSION}",
        "--only-binary=:all:", "--platform", WHEEL_PLATFORM, "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "-d", str(dest),
    ]  # fmt: skip
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"mediapipe-{MP_VERSION}-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one mediapipe wheel in {dest}, found {wheels}")
    return wheels[0]


def extract(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out)


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving linear resize into a size x size canvas, centred, black padding."""
    h, w = rgb.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def preprocess(image_path: Path) -> np.ndarray:
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot decode {image_path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxed = letterbox(rgb, INPUT_SIZE).astype(np.float32)
    x = boxed * np.float32(PREPROCESS.scale) + np.float32(PREPROCESS.offset)
    return x[None].astype(np.float32)


def tflite_specs(model: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    it = Interpreter(model_path=str(model))

    def spec(d: dict[str, object]) -> TensorSpec:
        dtype = np.dtype(d["dtype"]).name  # type: ignore[call-overload]
        shape = [int(v) for v in d["shape_signature"]]  # type: ignore[attr-defined]
        return TensorSpec(name=str(d["name"]), dtype=dtype, shape=[v if v >= 0 else None for v in shape])

    return [spec(d) for d in it.get_input_details()], [spec(d) for d in it.get_output_details()]


def run_tflite(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def onnx_specs(model: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "float32"}

    def spec(a: object) -> TensorSpec:
        shape = [d if isinstance(d, int) else None for d in a.shape]  # type: ignore[attr-defined]
        return TensorSpec(name=a.name, dtype=types[a.type], shape=shape)  # type: ignore[attr-defined]

    return [spec(a) for a in sess.get_inputs()], [spec(a) for a in sess.get_outputs()]


def run_onnx(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": x}), strict=True))


def check_face(outputs: dict[str, np.ndarray], what: str) -> FaceBox:
    faces = decode(outputs["regressors"], outputs["classificators"], POSTPROCESS)
    if len(faces) != 1 or faces[0].score < 0.85:
        raise SystemExit(f"{what}: expected one face with score >= 0.85 on the sample, got {faces}")
    f = faces[0]
    px = [round(v * 512, 1) for v in (f.xmin, f.ymin, f.xmax, f.ymax)]
    log(f"{what}: one face, score {f.score:.4f}, box x {px[0]}-{px[2]} y {px[1]}-{px[3]} (512 px)")
    return f


def write_package(
    pkg: Path,
    *,
    name: str,
    backend: str,
    model_src: Path,
    model_file: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    x: np.ndarray,
    y: dict[str, np.ndarray],
    source: str,
    license_file: Path,
    notice: str,
    sample: Path,
) -> None:
    if pkg.exists():
        shutil.rmtree(pkg)
    (pkg / "samples").mkdir(parents=True)
    shutil.copyfile(model_src, pkg / model_file)
    shutil.copyfile(license_file, pkg / "LICENSE.txt")
    (pkg / "NOTICE.txt").write_text(notice)
    shutil.copyfile(sample, pkg / "samples" / "astronaut.png")
    (pkg / "samples" / "LICENSE.txt").write_text(SAMPLE_LICENSE)
    golden_sha = save_golden(pkg, {"input": x}, {k: y[k] for k in ("regressors", "classificators")})
    manifest = Manifest(
        name=name,
        version=pkg.name,
        description=DESCRIPTION,
        backend=backend,  # type: ignore[arg-type]
        task="detection",
        file=model_file,
        sha256=sha256_file(pkg / model_file),
        inputs=inputs,
        outputs=outputs,
        preprocessing=PREPROCESS,
        postprocessing=POSTPROCESS,
        labels=["face"],
        golden=Golden(sha256=golden_sha, atol=ATOL, tolerance_reason=TOLERANCE_REASON),
        batching=Batching(enabled=False, max_batch_size=1),
        source=source,
        license=LICENSE_TEXT,
    )
    write_manifest(pkg, manifest)
    log(f"wrote {pkg.relative_to(REPO)}")


def ensure_onnx_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        req = Path(__file__).with_name("requirements-face.txt")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    return py


def convert_onnx(py: Path, tflite: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(py), "-m", "tf2onnx.convert", "--tflite", str(tflite), "--output", str(out),
           "--opset", str(ONNX_OPSET)]  # fmt: skip
    log(" ".join(cmd))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="use this mediapipe wheel instead of downloading it")
    ap.add_argument("--sample", type=Path, default=None, help="astronaut.png (default: shared reference)")
    ap.add_argument("--onnx-venv", type=Path, default=Path("/work/venvs/face-onnx"))
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args()

    sample = args.sample
    if sample is None:
        for cand in (
            REPO.parent / "shared" / "reference" / "images" / "astronaut.png",
            REPO / "models" / "face" / "1" / "samples" / "astronaut.png",
        ):
            if cand.is_file():
                sample = cand
                break
    if sample is None or not sample.is_file():
        raise SystemExit("astronaut.png not found; pass --sample")

    with tempfile.TemporaryDirectory(prefix="build_face_") as tmp_s:
        tmp = Path(tmp_s)
        if sample.resolve().is_relative_to(REPO / "models"):
            sample = Path(shutil.copyfile(sample, tmp / "astronaut.png"))  # the package dir gets rebuilt
        wheel = args.wheel or download_wheel(tmp)
        wheel_sha = sha256_file(wheel)
        tflite = tmp / "model.tflite"
        extract(wheel, WHEEL_MEMBER, tflite)
        extract(wheel, WHEEL_LICENSE, tmp / "LICENSE")
        got = sha256_file(tflite)
        if got != TFLITE_SHA256:
            raise SystemExit(f"{WHEEL_MEMBER} has sha256 {got}, expected {TFLITE_SHA256}")
        log(f"{wheel.name} (sha256 {wheel_sha}) -> {WHEEL_MEMBER} (sha256 {got})")

        inputs, outputs = tflite_specs(tflite)
        for t in inputs + outputs:
            log(f"tflite {t.name}: {t.dtype} {t.shape}")
        x = preprocess(sample)
        y_tfl = run_tflite(tflite, x)
        check_face(y_tfl, "litert")

        origin = (
            f"`pip download --no-deps mediapipe=={MP_VERSION}` ({wheel.name}, sha256 {wheel_sha}); "
            f"member {WHEEL_MEMBER} (sha256 {TFLITE_SHA256})"
        )
        notice = textwrap.dedent(f"""\
            face_detection_short_range.tflite - MediaPipe BlazeFace short-range face detector.
            Copyright The MediaPipe Authors (Google LLC). Licensed under the Apache License 2.0;
            LICENSE.txt is the licence file shipped in the mediapipe {MP_VERSION} wheel.

            Obtained from the mediapipe {MP_VERSION} wheel on PyPI ({wheel.name}),
            member {WHEEL_MEMBER}, sha256 {TFLITE_SHA256}.
            """)
        write_package(
            REPO / "models" / "face" / "1",
            name="face",
            backend="litert",
            model_src=tflite,
            model_file="model.tflite",
            inputs=inputs,
            outputs=outputs,
            x=x,
            y=y_tfl,
            source=f"Extracted unchanged from {origin}; packaged by models/scripts/build_face.py.",
            license_file=tmp / "LICENSE",
            notice=notice + "The model file is unmodified.\n",
            sample=sample,
        )

        if args.skip_onnx:
            return 0
        onnx_root = REPO / "models" / "face_onnx"
        not_built = onnx_root / "NOT_BUILT.md"
        raw_onnx, onnx_path = tmp / "model.raw.onnx", tmp / "model.onnx"
        try:
            py = ensure_onnx_venv(args.onnx_venv)
            res = convert_onnx(py, tflite, raw_onnx)
            if res.returncode == 0 and raw_onnx.is_file():
                res = subprocess.run(
                    [str(py), "-c", CANONICALIZE_ONNX, str(raw_onnx), str(onnx_path)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            ok = res.returncode == 0 and onnx_path.is_file()
            error = None if ok else (res.stdout + res.stderr)[-4000:]
        except (subprocess.CalledProcessError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            # No package that this build could not reproduce is left behind.
            shutil.rmtree(onnx_root / "1", ignore_errors=True)
            onnx_root.mkdir(parents=True, exist_ok=True)
            not_built.write_text(
                "# face_onnx not built\n\n"
                f"`tf2onnx.convert --tflite` or the canonicalization (venv {args.onnx_venv}) "
                f"failed:\n\n```\n{error}\n```\n"
            )
            log(f"ONNX conversion failed; see {not_built.relative_to(REPO)}")
            return 1
        not_built.unlink(missing_ok=True)

        o_inputs, o_outputs = onnx_specs(onnx_path)
        for t in o_inputs + o_outputs:
            log(f"onnx {t.name}: {t.dtype} {t.shape}")
        if [(t.name, t.shape) for t in o_inputs] != [(t.name, t.shape) for t in inputs]:
            raise SystemExit(f"ONNX inputs {o_inputs} differ from the TFLite ones {inputs}")
        y_onnx = run_onnx(onnx_path, x)
        diffs = {k: float(np.abs(y_onnx[k] - y_tfl[k]).max()) for k in y_tfl}
        log(f"max |onnxruntime - litert| on the sample: {diffs}")
        if max(diffs.values()) > ATOL:
            raise SystemExit(f"ONNX outputs differ from LiteRT by {diffs}, more than {ATOL}")
        check_face(y_onnx, "onnx")
        versions = subprocess.run(
            [str(py), "-c", "import tf2onnx, onnx, tensorflow as tf; "
             "print(f'tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, tensorflow {tf.__version__}')"],
            capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        ).stdout.strip()  # fmt: skip
        diff_txt = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        write_package(
            onnx_root / "1",
            name="face_onnx",
            backend="onnx",
            model_src=onnx_path,
            model_file="model.onnx",
            inputs=o_inputs,
            outputs=o_outputs,
            x=x,
            y=y_onnx,
            source=(
                f"Converted from {origin} with `python -m tf2onnx.convert --tflite --opset {ONNX_OPSET}` "
                f"({versions}); max |onnxruntime - LiteRT| on the astronaut sample: {diff_txt}. "
                "The graph was then canonicalized (content-ordered nodes, derived tensor names: tf2onnx's "
                "own output differs byte-wise run to run) by models/scripts/build_face.py."
            ),
            license_file=tmp / "LICENSE",
            notice=notice + f"Modified: converted from TFLite to ONNX (opset {ONNX_OPSET}) with {versions}; "
            "the TFLite ops were rewritten as ONNX ops (NCHW convolutions between transposes), "
            "the fp16 weights dequantized to fp32 and the graph canonicalized; the computation is the same "
            f"(outputs within {max(diffs.values()):.1e} of the TFLite model's on the sample).\n",
            sample=sample,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
