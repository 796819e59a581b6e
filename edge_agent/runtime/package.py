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


Postprocess = Annotated[Classification | Detection, Field(discriminator="type")]


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
        elif isinstance(post, Detection):
            for ref in (post.boxes_output, post.scores_output):
                if ref not in out_names:
                    problems.append(f"postprocessing refers to unknown output {ref!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


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
