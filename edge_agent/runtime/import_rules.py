"""What ``models import`` decides from the model's signature and the user's flags: inputs.

Two rules, each raising :class:`ImportRejected` with the flag to pass when the
file does not tell enough: the image preprocessing (and whether the input can
take it) and the golden inputs (user samples or seeded). The decoder's rules
are in :mod:`edge_agent.runtime.import_decoders`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edge_agent.errors import EdgeAgentError, ImportRejected, InvalidInput
from edge_agent.runtime.package import (
    ImagePreprocess,
    Manifest,
    Resize,
    TensorSpec,
)
from edge_agent.runtime.signature import Signature, TensorInfo

if TYPE_CHECKING:
    from edge_agent.runtime.import_options import ImportOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
DETECTORS = ("yolo", "ssd", "blazeface")
SEEDED_ROWS = 2  # a dynamic batch is exercised with two rows
RANGE_HINT = "--input-range LO:HI (0:1, -1:1 or 0:255: the pixel values the model was trained on)"


# -- preprocessing ----------------------------------------------------------------------------
def preprocessing(sig: Signature, opts: ImportOptions) -> ImagePreprocess | None:
    img = opts.image
    if img is None:
        if opts.postprocess in DETECTORS:
            raise ImportRejected(
                f"a {opts.postprocess} detector takes images: pass {RANGE_HINT}", flag="--input-range"
            )
        return None
    if len(sig.inputs) != 1:
        names = [t.name for t in sig.inputs]
        raise ImportRejected(
            f"the model has {len(names)} inputs {names}; image preprocessing feeds exactly one: "
            f"import it without --input-range and send tensors",
            reason="unfeedable_input",
        )
    t = sig.inputs[0]
    if len(t.shape) != 4:
        raise ImportRejected(
            f"input {t.name!r} has shape {t.shape}: image preprocessing feeds a 4-D [N, H, W, C] or "
            f"[N, C, H, W] tensor; import it without --input-range and send tensors",
            reason="unfeedable_input",
        )
    if t.dtype not in ("float32", "float16"):
        raise ImportRejected(
            f"input {t.name!r} is {t.dtype} without quantization parameters; image preprocessing "
            f"produces float tensors",
            reason="unfeedable_input",
        )
    layout = img.layout or ("NHWC" if t.shape[3] in (1, 3) else "NCHW" if t.shape[1] in (1, 3) else None)
    if layout is None:
        raise ImportRejected(
            f"input {t.name!r} has shape {t.shape}: no dimension of 1 or 3 channels where NHWC or NCHW "
            f"put it; image preprocessing feeds gray or colour images (pass --layout if it is dynamic)",
            reason="unfeedable_input",
            flag="--layout",
        )
    c, h, w = (
        (t.shape[3], t.shape[1], t.shape[2]) if layout == "NHWC" else (t.shape[1], t.shape[2], t.shape[3])
    )
    if c not in (1, 3, None):
        raise ImportRejected(
            f"input {t.name!r} has {c} channels; images have 1 or 3", reason="unfeedable_input"
        )
    if img.size is not None:
        if (w is not None and w != img.size[0]) or (h is not None and h != img.size[1]):
            raise ImportRejected(
                f"--image-size {img.size[0]}x{img.size[1]} disagrees with input {t.name!r} "
                f"of shape {t.shape}",
                flag="--image-size",
            )
        w, h = img.size
    if w is None or h is None:
        raise ImportRejected(
            f"input {t.name!r} has dynamic height/width {t.shape}; say the size with --image-size WxH",
            flag="--image-size",
        )
    color = img.color or ("gray" if c == 1 else "rgb")
    if (color == "gray") != (c == 1) and c is not None:
        raise ImportRejected(
            f"--color {color} gives {1 if color == 'gray' else 3} channels; input {t.name!r} has {c}",
            flag="--color",
        )
    lo, hi = img.input_range
    if not hi > lo:
        raise ImportRejected(
            f"--input-range {lo}:{hi}: the high end must be above the low end", flag="--input-range"
        )
    for vec, flag in ((img.mean, "--mean"), (img.std, "--std")):
        if vec is not None and len(vec) not in (1, 1 if color == "gray" else 3):
            raise ImportRejected(
                f"{flag} has {len(vec)} values; the image has {1 if color == 'gray' else 3} channels",
                flag=flag,
            )
    return ImagePreprocess(
        input=t.name,
        color=color,
        resize=Resize(width=w, height=h, mode=img.resize),
        invert=img.invert,
        scale=(hi - lo) / 255.0,
        offset=lo,
        mean=img.mean,
        std=img.std,
        layout=layout,
    )


def _tensor_spec(t: TensorInfo) -> TensorSpec:
    return TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape)


# -- golden inputs ----------------------------------------------------------------------------
def _sample_arrays(path: Any, sig: Signature, pre: ImagePreprocess | None) -> dict[str, np.ndarray]:
    from edge_agent.runtime.preprocess import preprocess

    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportRejected(f"sample {path}: {exc.strerror}", flag="--sample") from None
    single = sig.inputs[0].name if len(sig.inputs) == 1 else None
    if suffix in IMAGE_SUFFIXES:
        if pre is None:
            raise ImportRejected(
                f"sample {path.name} is an image: images need {RANGE_HINT}", flag="--input-range"
            )
        try:
            x, _ = preprocess(raw, pre)
        except EdgeAgentError as exc:
            raise ImportRejected(f"sample {path.name}: {exc.message}", flag="--sample") from None
        return {pre.input: x[None]}
    if suffix == ".npy":
        import io

        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImportRejected(f"sample {path.name} is not a .npy array: {exc}", flag="--sample") from None
        named: dict[str, Any] = {single: arr} if single else {}
        if not single:
            raise ImportRejected(
                f"sample {path.name}: the model has several inputs; use a JSON sample", flag="--sample"
            )
    elif suffix == ".json":
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImportRejected(f"sample {path.name} is not valid JSON: {exc}", flag="--sample") from None
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
            named = dict(doc["inputs"])
        elif single is not None:
            named = {single: doc["data"] if isinstance(doc, dict) and "data" in doc else doc}
        else:
            raise ImportRejected(
                f'sample {path.name}: name every input with {{"inputs": {{...}}}}', flag="--sample"
            )
    else:
        raise ImportRejected(
            f"sample {path.name}: use an image (.jpg .png .bmp), .npy or .json", flag="--sample"
        )
    out = {}
    for t in sig.inputs:
        if t.name not in named:
            raise ImportRejected(f"sample {path.name} has no input {t.name!r}", flag="--sample")
        try:
            a = np.asarray(named[t.name])
        except ValueError as exc:
            raise ImportRejected(
                f"sample {path.name}: input {t.name!r} is ragged: {exc}", flag="--sample"
            ) from None
        out[t.name] = a[None] if a.ndim == len(t.shape) - 1 else a
    return out


def golden_inputs(
    sig: Signature, opts: ImportOptions, pre: ImagePreprocess | None
) -> tuple[dict[str, np.ndarray], str]:
    from edge_agent.runtime.inputs import validate

    fixed = {t.shape[0] for t in sig.inputs if t.shape and t.shape[0] is not None}
    batch = min(fixed) if fixed else None
    # validate() reads only the name and the inputs of a manifest
    specs = cast(Manifest, SimpleNamespace(name="import", inputs=[_tensor_spec(t) for t in sig.inputs]))
    if opts.samples:
        rows: dict[str, list[np.ndarray]] = {t.name: [] for t in sig.inputs}
        for path in opts.samples:
            for k, v in _sample_arrays(path, sig, pre).items():
                rows[k].append(v)
        try:
            arrays = {k: np.concatenate(v) for k, v in rows.items()}
        except ValueError as exc:
            raise ImportRejected(f"the samples do not stack into one batch: {exc}", flag="--sample") from None
        n = next(iter(arrays.values())).shape[0]
        names = ", ".join(p.name for p in opts.samples)
        origin = f"the user's samples ({names})"
        if batch is not None and n != batch:
            if n < batch:
                raise ImportRejected(
                    f"the model takes a fixed batch of {batch}; give {batch} samples", flag="--sample"
                )
            arrays = {k: v[:batch] for k, v in arrays.items()}
            origin += f", first {batch} row(s): the model's batch is fixed at {batch}"
    else:
        rng = np.random.default_rng(opts.seed)
        n = batch or SEEDED_ROWS
        if pre is not None:
            from edge_agent.runtime.preprocess import transform

            w, h = pre.resize.width, pre.resize.height
            imgs = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
            arrays = {pre.input: np.stack([transform(im, pre)[0] for im in imgs])}
            origin = (
                f"seeded inputs: {n} random {w}x{h} images (numpy default_rng({opts.seed}), "
                f"uniform pixels 0-255) through the preprocessing (no --sample given)"
            )
        else:
            arrays = {}
            for t in sig.inputs:
                if any(d is None for d in t.shape[1:]):
                    raise ImportRejected(
                        f"input {t.name!r} has dynamic dimensions {t.shape} beyond the batch; "
                        f"seeded inputs need a fixed shape: give a real input with --sample FILE",
                        flag="--sample",
                    )
                shape = (n, *[int(d) for d in t.shape[1:] if d is not None])
                if t.dtype in ("float32", "float16"):
                    arrays[t.name] = rng.random(shape).astype(t.dtype)
                elif t.dtype == "bool":
                    arrays[t.name] = rng.integers(0, 2, size=shape).astype(bool)
                else:
                    arrays[t.name] = rng.integers(0, 10, size=shape).astype(t.dtype)
            origin = (
                f"seeded inputs: {n} row(s) from numpy default_rng({opts.seed}), floats uniform "
                f"in [0, 1), integers in 0..9 (no --sample given)"
            )
    try:
        return validate(specs, arrays), origin
    except InvalidInput as exc:
        raise ImportRejected(
            f"the golden inputs do not fit the model: {exc.message}", flag="--sample"
        ) from None


def drift_reference(
    sig: Signature, opts: ImportOptions, pre: ImagePreprocess | None
) -> tuple[dict[str, Any] | None, str]:
    """The package's drift reference from the user's samples, or None; and a sentence saying which
    and why. Run after ``golden_inputs`` (which refuses unreadable samples). Images add their source
    size; every sample row counts (not only the golden batch). Inputs only: the label shares would
    need the model run on every sample, which a fixed-batch model cannot take at once."""
    from edge_agent.runtime import drift, drift_sample
    from edge_agent.runtime.preprocess import preprocess

    need = drift_sample.MIN_REFERENCE_ROWS
    if not opts.samples:
        return None, (
            "no drift reference written: no --sample given, and seeded inputs say nothing about what "
            f"the model will see; pass at least {need} rows of real inputs with --sample"
        )
    first = pre.input if pre is not None else sig.inputs[0].name
    parts: list[dict[str, np.ndarray]] = []  # features per sample file: never every tensor at once
    for path in opts.samples:
        if path.suffix.lower() in IMAGE_SUFFIXES and pre is not None:
            x, geo = preprocess(path.read_bytes(), pre)
            parts.append(drift.features(x[None], [(geo.width, geo.height)]))
        else:
            x = np.asarray(_sample_arrays(path, sig, pre)[first], dtype=np.float64)
            parts.append(drift.features(x))  # the same features the gateway takes of this input
    common = set.intersection(*(set(p) for p in parts))  # images and arrays mixed: no source size
    feats = {k: np.concatenate([p[k] for p in parts]) for k in sorted(common, key=list(parts[0]).index)}
    n = len(next(iter(feats.values()))) if feats else 0
    if n < need:
        return None, (
            f"no drift reference written: the samples hold {n} row(s), fewer than the {need} a "
            "reference needs (fewer rows are sampling noise); pass more with --sample"
        )
    names = ", ".join(p.name for p in opts.samples[:5]) + (" ..." if len(opts.samples) > 5 else "")
    doc = drift_sample.reference(feats, None, f"the user's samples ({names}): {n} rows, inputs only", n)
    return doc, f"drift reference written from {n} sample row(s): {', '.join(doc['features'])}"
