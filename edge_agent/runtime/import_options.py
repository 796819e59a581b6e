"""The options of ``models import``: what the file cannot tell about itself.

One definition for everyone who builds or reads them: the command line
(:mod:`edge_agent.runtime.import_args`), the importer
(:mod:`edge_agent.runtime.importer`) and its rules for inputs and outputs
(:mod:`edge_agent.runtime.import_rules`, :mod:`edge_agent.runtime.import_decoders`).
Plain frozen dataclasses: importing this module loads nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PostprocessKind = Literal["classification", "yolo", "ssd", "blazeface", "none"]
Task = Literal["classification", "detection"]


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """How images become the input tensor; ``None`` = read it from the model's shape."""

    input_range: tuple[float, float]
    size: tuple[int, int] | None = None  # (width, height)
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    color: Literal["rgb", "bgr", "gray"] | None = None
    layout: Literal["NHWC", "NCHW"] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    invert: bool = False


@dataclass(frozen=True, slots=True)
class DecoderOptions:
    output: str | None = None  # classification / yolo output; None: the only candidate
    yolo_layout: Literal["auto", "yolov8", "yolov5"] = "auto"
    box_format: str | None = None
    normalized_boxes: bool | None = None
    min_score: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    anchors: str | None = None  # blazeface preset
    softmax: bool | None = None  # classification: None = decide from the golden outputs
    ssd_outputs: dict[str, str] = field(default_factory=dict)  # role (boxes/scores/classes/count) -> output


@dataclass(frozen=True, slots=True)
class ImportOptions:
    name: str | None = None
    version: str = "1"
    task: Task | None = None
    postprocess: PostprocessKind = "none"
    labels: list[str] = field(default_factory=list)
    image: ImageOptions | None = None
    decoder: DecoderOptions = field(default_factory=DecoderOptions)
    samples: list[Path] = field(default_factory=list)
    seed: int = 0
    description: str = ""
    source: str = ""
    license: str = ""
    max_batch_size: int = 32
