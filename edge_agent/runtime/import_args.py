"""The import flags, defined once: ``edge-agent models import`` and ``cloud-sync models publish FILE``.

Building the parser imports nothing heavy (every role's command line is built from it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_agent.errors import ImportRejected
from edge_agent.runtime.import_options import DecoderOptions, ImageOptions, ImportOptions

RANGES = {"0:1": (0.0, 1.0), "-1:1": (-1.0, 1.0), "0:255": (0.0, 255.0)}


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of an import (not PATH, not --activate)."""
    p.add_argument("--name", help="model name (default: the file name, lower-cased)")
    p.add_argument("--version", default="1", help="version to write (default: 1); an existing one is refused")
    p.add_argument("--task", choices=["classification", "detection"], help="needed with --postprocess none")
    p.add_argument(
        "--postprocess",
        choices=["classification", "yolo", "ssd", "blazeface", "none"],
        default="none",
        help="decoder for the outputs (default: none, raw tensors)",
    )
    p.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line")
    p.add_argument(
        "--sample",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="golden inputs: images, .npy or JSON (default: seeded random inputs, said in the manifest)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random golden inputs (default 0)")
    g = p.add_argument_group("image preprocessing (on when --input-range is given)")
    g.add_argument(
        "--input-range", metavar="LO:HI", help="pixel values the model expects: 0:1, -1:1, 0:255 or any LO:HI"
    )
    g.add_argument("--image-size", metavar="WxH", help="input size (default: from the model's shape)")
    g.add_argument(
        "--resize",
        choices=["stretch", "center_crop", "letterbox"],
        default=None,
        help="default: stretch; letterbox for detectors",
    )
    g.add_argument("--color", choices=["rgb", "bgr", "gray"], help="default: gray for 1 channel, else rgb")
    g.add_argument("--layout", choices=["NHWC", "NCHW"], help="default: from the model's shape")
    g.add_argument("--mean", metavar="M[,M,M]", help="subtract after scaling, per channel")
    g.add_argument("--std", metavar="S[,S,S]", help="divide by after the mean, per channel")
    g.add_argument("--invert", action="store_true", help="255 - pixel before scaling")
    g = p.add_argument_group("decoder settings")
    g.add_argument("--output", help="output holding the scores / YOLO predictions / box regressors")
    g.add_argument(
        "--yolo-layout",
        choices=["auto", "yolov8", "yolov5"],
        default="auto",
        help="yolov8 [N,4+C,A]; yolov5 [N,A,5+C]",
    )
    g.add_argument(
        "--box-format", choices=["cxcywh", "xyxy", "yxyx"], help="default: cxcywh (yolo), yxyx (ssd)"
    )
    g.add_argument(
        "--normalized-boxes", action="store_true", default=None, help="box coordinates are 0..1 of the input"
    )
    g.add_argument("--min-score", type=float, help="drop detections below this score")
    g.add_argument("--iou", type=float, help="NMS IoU threshold")
    g.add_argument("--max-detections", type=int, help="at most this many boxes per image")
    g.add_argument(
        "--anchors", choices=["face", "person"], help="blazeface anchor preset (blazeface.PRESETS)"
    )
    g.add_argument(
        "--ssd-outputs",
        metavar="ROLE=NAME,...",
        help="SSD outputs by role: boxes=,scores=[,classes=][,count=] (default: told by shape)",
    )
    g = p.add_argument_group("provenance")
    g.add_argument("--description", default="", help="what the model does")
    g.add_argument("--source", default="", help="where the model came from")
    g.add_argument("--license", default="", help="its licence")


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ImportRejected(f"{flag} {text!r}: give comma-separated numbers", flag=flag) from None


def _roles(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        return dict(part.split("=", 1) for part in text.split(","))
    except ValueError:
        raise ImportRejected(
            f"--ssd-outputs {text!r}: give ROLE=NAME pairs, e.g. boxes=b,scores=s", flag="--ssd-outputs"
        ) from None


def options_from_args(args: Any) -> ImportOptions:
    image = None
    if args.input_range is not None:
        text = args.input_range
        try:
            lo, hi = RANGES.get(text) or tuple(float(v) for v in text.split(":"))
        except ValueError:
            raise ImportRejected(
                f"--input-range {text!r}: give LO:HI, e.g. 0:1", flag="--input-range"
            ) from None
        size = None
        if args.image_size:
            try:
                w, h = (int(v) for v in args.image_size.lower().split("x"))
                size = (w, h)
            except ValueError:
                raise ImportRejected(
                    f"--image-size {args.image_size!r}: give WxH, e.g. 224x224", flag="--image-size"
                ) from None
        detector = args.postprocess in ("yolo", "ssd", "blazeface")
        image = ImageOptions(
            input_range=(lo, hi),
            size=size,
            resize=args.resize or ("letterbox" if detector else "stretch"),
            color=args.color,
            layout=args.layout,
            mean=_floats(args.mean, "--mean"),
            std=_floats(args.std, "--std"),
            invert=args.invert,
        )
    labels: list[str] = []
    if args.labels is not None:
        try:
            labels = [ln.strip() for ln in args.labels.read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportRejected(f"--labels {args.labels}: {exc}", flag="--labels") from None
    return ImportOptions(
        name=args.name,
        version=args.version,
        task=args.task,
        postprocess=args.postprocess,
        labels=labels,
        image=image,
        decoder=DecoderOptions(
            output=args.output,
            yolo_layout=args.yolo_layout,
            box_format=args.box_format,
            normalized_boxes=args.normalized_boxes,
            min_score=args.min_score,
            iou_threshold=args.iou,
            max_detections=args.max_detections,
            anchors=args.anchors,
            ssd_outputs=_roles(args.ssd_outputs),
        ),
        samples=list(args.sample),
        seed=args.seed,
        description=args.description,
        source=args.source,
        license=args.license,
    )
