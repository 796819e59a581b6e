"""What ``models import`` decides about the outputs: which decoder settings fit them.

``postprocessing`` builds the manifest's ``postprocessing`` from ``--postprocess``
and the outputs' shapes (asking by flag for what shapes cannot tell);
``check_decoder`` runs it on the golden outputs so a decoder that does not fit
is refused at import, not found in production.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.errors import EdgeAgentError, ImportRejected
from edge_agent.runtime.package import (
    Classification,
    ImagePreprocess,
    Manifest,
    Postprocess,
    SsdDetection,
    YoloDetection,
)
from edge_agent.runtime.signature import Signature

if TYPE_CHECKING:
    from edge_agent.runtime.import_options import ImportOptions


def _labels_fit(opts: ImportOptions, classes: int | None, where: str) -> None:
    if opts.labels and classes is not None and len(opts.labels) != classes:
        raise ImportRejected(
            f"--labels has {len(opts.labels)} names but {where} has {classes} classes", flag="--labels"
        )


def _pick(sig: Signature, wanted: str | None, ok: Any, what: str) -> str:
    names = [t.name for t in sig.outputs]
    if wanted is not None:
        if wanted not in names:
            raise ImportRejected(f"--output {wanted!r} is not an output; outputs: {names}", flag="--output")
        return wanted
    candidates = [t.name for t in sig.outputs if ok(t)]
    if len(candidates) != 1:
        raise ImportRejected(
            f"which output holds the {what}? candidates {candidates or names}: pass --output NAME",
            flag="--output",
        )
    return candidates[0]


def postprocessing(
    sig: Signature, opts: ImportOptions, pre: ImagePreprocess | None, outputs: dict[str, np.ndarray]
) -> Postprocess | None:
    d = opts.decoder
    kind = opts.postprocess
    common: dict[str, Any] = {
        k: v
        for k, v in (
            ("min_score", d.min_score),
            ("iou_threshold", d.iou_threshold),
            ("max_detections", d.max_detections),
        )
        if v is not None
    }
    if kind == "none":
        return None
    if kind == "classification":
        out = _pick(
            sig, d.output, lambda t: t.dtype.startswith("float") and len(t.shape) == 2, "class scores"
        )
        scores = outputs[out]
        label_out = next((t.name for t in sig.outputs if t.dtype == "int64" and len(t.shape) == 1), None)
        _labels_fit(opts, int(scores.shape[-1]), f"output {out!r}")
        softmax = d.softmax
        if softmax is None:  # probabilities already: every row in [0, 1] summing to 1
            probs = bool(
                np.all((scores >= 0) & (scores <= 1)) and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3)
            )
            softmax = not probs
        return Classification(output=out, label_output=label_out, apply_softmax=softmax)
    if kind == "yolo":
        from edge_agent.runtime.detect import resolve_yolo_layout, yolo_classes

        out = _pick(sig, d.output, lambda t: len(t.shape) == 3, "YOLO predictions")
        spec = YoloDetection(
            output=out,
            layout=d.yolo_layout,
            box_format=d.box_format or "cxcywh",
            normalized=bool(d.normalized_boxes),
            **common,
        )
        try:
            layout = resolve_yolo_layout(list(outputs[out].shape), spec)
        except EdgeAgentError as exc:
            raise ImportRejected(exc.message, flag="--yolo-layout") from None
        _labels_fit(opts, yolo_classes(list(outputs[out].shape), layout), f"YOLO output {out!r} ({layout})")
        return spec
    if kind == "ssd":
        return _ssd(sig, opts, common)
    from edge_agent.runtime.blazeface import PRESETS, preset

    if d.anchors not in PRESETS:
        raise ImportRejected(
            f"blazeface needs the anchor preset: pass --anchors {'|'.join(PRESETS)}", flag="--anchors"
        )
    boxes_out = _pick(
        sig, d.output, lambda t: len(t.shape) == 3 and (t.shape[-1] or 0) >= 4, "box regressors"
    )
    scores_out = next((t.name for t in sig.outputs if len(t.shape) == 3 and t.shape[-1] == 1), None)
    if scores_out is None:
        raise ImportRejected(
            "blazeface needs a score output [1, anchors, 1]; the model has none", reason="decoder"
        )
    try:
        return preset(d.anchors, boxes_out, scores_out, **common)
    except ValueError as exc:
        raise ImportRejected(f"blazeface preset {d.anchors!r}: {exc}", flag="--anchors") from None


def check_decoder(manifest: Manifest, outputs: dict[str, np.ndarray]) -> None:
    """Run the post-processing on the golden outputs: a decoder that does not fit fails here, not later."""
    from edge_agent.runtime.postprocess import postprocess

    n = next(iter(outputs.values())).shape[0] if outputs else 0
    try:
        postprocess(manifest, outputs, [None] * n)
    except (EdgeAgentError, ValueError, IndexError, KeyError) as exc:
        msg = exc.message if isinstance(exc, EdgeAgentError) else str(exc)
        kind = manifest.postprocessing.type if manifest.postprocessing else "no"
        raise ImportRejected(
            f"the {kind} post-processing does not fit the model's outputs: {msg}", reason="decoder"
        ) from None


def _ssd(sig: Signature, opts: ImportOptions, common: dict[str, Any]) -> SsdDetection:
    """SSD output roles: from --ssd-outputs when given, else by shape (and by name for the 4-output form)."""
    d = opts.decoder
    by = {t.name: t for t in sig.outputs}
    named = dict(d.ssd_outputs)
    unknown = sorted(set(named) - {"boxes", "scores", "classes", "count"})
    wrong = sorted(n for n in named.values() if n not in by)
    if unknown or wrong:
        raise ImportRejected(
            f"--ssd-outputs: roles are boxes, scores, classes, count (got {unknown}); outputs are "
            f"{sorted(by)} (unknown: {wrong})",
            flag="--ssd-outputs",
        )
    hint = "name them with --ssd-outputs boxes=NAME,scores=NAME[,classes=NAME][,count=NAME]"
    if "boxes" not in named:
        boxes = [n for n, t in by.items() if len(t.shape) == 3 and t.shape[-1] == 4]
        if len(boxes) != 1:
            raise ImportRejected(
                f"SSD needs one boxes output [N, A, 4]; found {boxes or 'none'}: {hint}", flag="--ssd-outputs"
            )
        named["boxes"] = boxes[0]
    rest = [n for n in by if n != named["boxes"]]
    if "scores" not in named:
        per_class = [n for n in rest if len(by[n].shape) == 3]
        flat = [n for n in rest if len(by[n].shape) == 2]
        if len(per_class) == 1 and "classes" not in named:
            named["scores"] = per_class[0]
        else:  # TFLite_Detection_PostProcess: boxes, classes, scores, count
            guess = {k: next((n for n in flat if k in n.lower()), None) for k in ("class", "score")}
            if guess["score"] is None or (guess["class"] is None and "classes" not in named):
                raise ImportRejected(
                    f"cannot tell the SSD scores and classes apart among {rest}: {hint}", flag="--ssd-outputs"
                )
            named["scores"] = guess["score"]
            named.setdefault("classes", guess["class"] or "")
            count = next((n for n in rest if len(by[n].shape) == 1), None)
            if count is not None:
                named.setdefault("count", count)
    scores = by[named["scores"]]
    if len(scores.shape) == 3 and "classes" not in named:
        _labels_fit(opts, scores.shape[-1], f"scores output {named['scores']!r}")
    return SsdDetection(
        boxes_output=named["boxes"], scores_output=named["scores"],
        classes_output=named.get("classes") or None, count_output=named.get("count") or None,
        box_format=d.box_format or "yxyx",
        normalized=True if d.normalized_boxes is None else d.normalized_boxes, **common,
    )  # fmt: skip
