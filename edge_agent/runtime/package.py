"""The model package: the one definition of ``manifest.json``.

A package is a directory ``<root>/<name>/<version>/`` holding the model file,
``manifest.json`` and ``golden.npz``. Everything that reads or writes a
manifest (the store, the engine, the build scripts, the fleet link) imports
the models defined here.

``golden.npz`` holds arrays named ``input.<tensor name>`` and
``output.<tensor name>``: a sample the model must reproduce, within the
manifest's tolerance, every time it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import IntegrityError, PackageError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GOLDEN_NAME = "golden.npz"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$")

DType = Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
Backend = Literal["onnx", "litert"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(description="Tensor name as the runtime knows it.")
    dtype: DType = Field(description="Element type the caller sees (before quantization).")
    shape: list[int | None] = Field(description="Dimensions; null is dynamic (the batch).")
    kind: Literal["tensor", "sequence_of_maps"] = Field(
        default="tensor",
        description="sequence_of_maps: skl2onnx ZipMap output, returned as a [N, classes] tensor.",
    )
    allow_nan: bool = Field(default=False, description="Whether NaN/inf are valid input values.")


class Resize(_Strict):
    width: int = Field(gt=0, le=4096)
    height: int = Field(gt=0, le=4096)
    mode: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    interpolation: Literal["linear", "area", "nearest"] = "linear"


class ImagePreprocess(_Strict):
    """How an encoded image becomes the model's input tensor, in this order:
    decode (EXIF orientation applied) -> colour -> resize -> invert ->
    (x * scale + offset - mean) / std -> layout -> dtype (-> int8 quantization
    by the backend when the model is quantized)."""

    version: str = Field(default="1", description="Bumped when the transform changes (data cache key).")
    input: str = Field(description="Name of the model input the image feeds.")
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    resize: Resize
    invert: bool = Field(default=False, description="255 - pixel, e.g. dark ink on white paper.")
    scale: float = Field(default=1.0 / 255.0)
    offset: float = 0.0
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Literal["NHWC", "NCHW"] = "NHWC"


class Classification(_Strict):
    type: Literal["classification"] = "classification"
    output: str = Field(description="Output holding scores or probabilities, [N, classes].")
    label_output: str | None = Field(default=None, description="Optional output holding the class index.")
    apply_softmax: bool = Field(default=False, description="True when the output holds logits.")
    top_k: int = Field(default=3, ge=1)


class Anchors(_Strict):
    """SSD anchor generation (MediaPipe's SsdAnchorsCalculator options)."""

    input_width: int
    input_height: int
    strides: list[int]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: list[float] = [1.0]
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True


class BodyBox(_Strict):
    """MediaPipe's pose ROI step (AlignmentPointsRectsCalculator): a square centred on
    keypoint ``center`` whose half side is ``scale`` times its distance to keypoint
    ``radius_point`` (the circle circumscribing the whole person); rotation is ignored."""

    center: int = Field(default=0, ge=0, description="Keypoint at the box centre (BlazePose: mid-hip).")
    radius_point: int = Field(default=1, ge=0, description="Keypoint on the circle around the body.")
    scale: float = Field(
        default=1.0, gt=0.0, description="1.0: the circle's square; MediaPipe's landmark ROI uses 1.25."
    )


class Detection(_Strict):
    type: Literal["blazeface"] = "blazeface"
    boxes_output: str = Field(description="Raw box regressors [1, anchors, 4 + 2*keypoints].")
    scores_output: str = Field(description="Raw score logits [1, anchors, 1].")
    anchors: Anchors
    num_keypoints: int = 6
    box_scale: float = Field(description="x_scale = y_scale = w_scale = h_scale of the decoder.")
    score_clip: float = 100.0
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1)
    keypoint_names: list[str] = []
    body_box: BodyBox | None = Field(
        default=None,
        description="Report a box derived from two keypoints instead of the detector's own box "
        "(BlazePose: the detector's box is the face; the body box comes from keypoints 0 and 1).",
    )


class _BoxDecoder(_Strict):
    """Settings every YOLO/SSD decoder shares (one internal detection format after them)."""

    min_score: float = Field(default=0.25, ge=0.0, le=1.0, description="Drop candidates below this score.")
    iou_threshold: float = Field(default=0.45, ge=0.0, le=1.0, description="NMS overlap that suppresses.")
    max_detections: int = Field(default=100, ge=1, description="At most this many boxes per image.")
    class_agnostic: bool = Field(default=False, description="NMS across classes (default: per class).")
    normalized: bool = Field(
        default=False, description="Box coordinates are 0..1 of the model input (else input pixels)."
    )


class YoloDetection(_BoxDecoder):
    """One YOLO output: ``yolov8`` = [N, 4+C, A] (cx, cy, w, h, class scores; Ultralytics
    v8/11), ``yolov5`` = [N, A, 5+C] (cx, cy, w, h, objectness, class scores; v5/v7);
    ``auto`` picks by shape (fewer rows than columns: yolov8)."""

    type: Literal["yolo"] = "yolo"
    output: str = Field(description="The output holding the raw predictions.")
    layout: Literal["auto", "yolov8", "yolov5"] = "auto"
    box_format: Literal["cxcywh", "xyxy"] = "cxcywh"


class SsdDetection(_BoxDecoder):
    """Decoded SSD outputs: boxes [N, A, 4] with per-class scores [N, A, C], or with
    one score [N, A] and a class index [N, A] (TFLite_Detection_PostProcess)."""

    type: Literal["ssd"] = "ssd"
    boxes_output: str = Field(description="Boxes [N, A, 4].")
    scores_output: str = Field(description="Scores [N, A, C] (per class) or [N, A] (best class).")
    classes_output: str | None = Field(default=None, description="Class index [N, A] when scores are [N, A].")
    count_output: str | None = Field(default=None, description="Number of valid rows [N] (TFLite SSD).")
    box_format: Literal["yxyx", "xyxy", "cxcywh"] = "yxyx"
    normalized: bool = True
    background_class: int | None = Field(default=None, description="Class index that means 'nothing'.")
    score_activation: Literal["none", "sigmoid", "softmax"] = "none"


Postprocess = Annotated[
    Classification | Detection | YoloDetection | SsdDetection, Field(discriminator="type")
]
DETECTORS = (Detection, YoloDetection, SsdDetection)


class TensorQuant(_Strict):
    scale: float
    zero_point: int


class Quantization(_Strict):
    scheme: Literal["none", "int8_static_qdq", "int8_full_integer"] = "none"
    per_channel: bool = False
    calibration: str | None = Field(default=None, description="What the calibration data was.")
    tensors: dict[str, TensorQuant] = Field(
        default_factory=dict, description="Scale/zero point of quantized inputs and outputs."
    )


class Golden(_Strict):
    file: str = GOLDEN_NAME
    sha256: str
    atol: float = Field(ge=0.0)
    rtol: float = Field(default=0.0, ge=0.0)
    tolerance_reason: str = Field(description="Why this tolerance: what can legitimately differ.")
    origin: str = Field(
        default="", description="Where the golden inputs came from (user samples, or seeded inputs)."
    )


class Metrics(_Strict):
    dataset: str
    heldout_size: int = Field(gt=0)
    heldout_accuracy: float = Field(ge=0.0, le=1.0)
    extra: dict[str, float] = Field(default_factory=dict)


class Batching(_Strict):
    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    description: str = ""
    backend: Backend
    task: Literal["classification", "detection"]
    file: str = Field(description="Model file name inside the package directory.")
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: ImagePreprocess | None = None
    postprocessing: Postprocess | None = None
    labels: list[str] = []
    quantization: Quantization = Quantization()
    metrics: Metrics | None = None
    golden: Golden
    batching: Batching = Batching()
    source: str = Field(default="", description="Where the model came from, how it was built.")
    license: str = ""

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        problems: list[str] = []
        if self.schema_version != SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        if not NAME_RE.match(self.name):
            problems.append(f"name {self.name!r} must match {NAME_RE.pattern}")
        if not VERSION_RE.match(self.version):
            problems.append(f"version {self.version!r} must match {VERSION_RE.pattern}")
        if "/" in self.file or self.file.startswith("."):
            problems.append(f"file {self.file!r} must be a plain file name")
        want_ext = {"onnx": ".onnx", "litert": ".tflite"}[self.backend]
        if not self.file.endswith(want_ext):
            problems.append(f"backend {self.backend} needs a {want_ext} file, got {self.file!r}")
        in_names = {t.name for t in self.inputs}
        out_names = {t.name for t in self.outputs}
        if not self.inputs or not self.outputs:
            problems.append("inputs and outputs must not be empty")
        pre = self.preprocessing
        if pre is not None and pre.input not in in_names:
            problems.append(f"preprocessing.input {pre.input!r} is not an input")
        post = self.postprocessing
        if isinstance(post, Classification):
            for ref in (post.output, post.label_output):
                if ref is not None and ref not in out_names:
                    problems.append(f"postprocessing refers to unknown output {ref!r}")
        elif post is not None:
            problems.extend(_check_detector(post, self.outputs, out_names))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


def _check_detector(
    post: Detection | YoloDetection | SsdDetection, outputs: list[TensorSpec], out_names: set[str]
) -> list[str]:
    problems: list[str] = []
    if isinstance(post, YoloDetection):
        refs: list[str | None] = [post.output]
    elif isinstance(post, SsdDetection):
        refs = [post.boxes_output, post.scores_output, post.classes_output, post.count_output]
    else:
        refs = [post.boxes_output, post.scores_output]
    for ref in refs:
        if ref is not None and ref not in out_names:
            problems.append(f"postprocessing refers to unknown output {ref!r}")
    if isinstance(post, Detection) and post.boxes_output in out_names:
        shape = next(t.shape for t in outputs if t.name == post.boxes_output)
        want = anchor_count(post.anchors)
        if len(shape) >= 2 and shape[-2] is not None and shape[-2] != want:
            problems.append(
                f"postprocessing.anchors make {want} anchors but output {post.boxes_output!r} "
                f"has {shape[-2]} rows; the anchor settings do not belong to this model"
            )
        if post.body_box is not None and max(post.body_box.center, post.body_box.radius_point) >= (
            post.num_keypoints
        ):
            problems.append(
                f"postprocessing.body_box names a keypoint beyond num_keypoints {post.num_keypoints}"
            )
    return problems


def anchor_count(spec: Anchors) -> int:
    """How many SSD anchors ``spec`` generates (the blazeface generator's count, without numpy)."""
    total, layer, n = 0, 0, len(spec.strides)
    while layer < n:
        last, per_cell = layer, 0
        while last < n and spec.strides[last] == spec.strides[layer]:
            per_cell += len(spec.aspect_ratios) + (1 if spec.interpolated_scale_aspect_ratio > 0.0 else 0)
            last += 1
        stride = spec.strides[layer]
        total += -(-spec.input_height // stride) * -(-spec.input_width // stride) * per_cell
        layer = last
    return total


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_manifest(text: str | bytes, where: str = "manifest") -> Manifest:
    """Parse and validate manifest JSON; raise PackageError naming every problem."""
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise PackageError(f"{where} is invalid: " + "; ".join(problems), problems=problems) from None


def read_manifest(package_dir: Path) -> Manifest:
    path = package_dir / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from None
    return parse_manifest(text, where=str(path))


def write_manifest(package_dir: Path, manifest: Manifest) -> None:
    data = manifest.model_dump(mode="json", exclude_defaults=False)
    (package_dir / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")


def verify_files(package_dir: Path, manifest: Manifest) -> None:
    """Check the model and golden files against the manifest's sha256."""
    for fname, want in ((manifest.file, manifest.sha256), (manifest.golden.file, manifest.golden.sha256)):
        path = package_dir / fname
        if not path.is_file():
            raise PackageError(f"{manifest.name}/{manifest.version}: {fname} is missing")
        got = sha256_file(path)
        if got != want:
            raise IntegrityError(
                f"{manifest.name}/{manifest.version}: {fname} has sha256 {got[:12]}..., "
                f"manifest says {want[:12]}...; the file is corrupt or was tampered with",
                file=fname,
            )


def load_golden(package_dir: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    path = package_dir / manifest.golden.file
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path}: unreadable golden sample ({exc})") from None
    inputs = {k.removeprefix("input."): v for k, v in arrays.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in arrays.items() if k.startswith("output.")}
    if set(inputs) != {t.name for t in manifest.inputs} or not outputs:
        raise PackageError(f"{path}: golden sample must hold every input and at least one output")
    return inputs, outputs


def save_golden(package_dir: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
    """Write golden.npz (used by the build scripts); return its sha256."""
    arrays = {f"input.{k}": v for k, v in inputs.items()} | {f"output.{k}": v for k, v in outputs.items()}
    path = package_dir / GOLDEN_NAME
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return sha256_file(path)
