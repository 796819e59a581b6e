"""A user's bare ``.onnx`` / ``.tflite`` file -> a model package: ``models import``.

What the file tells is read from the backend that will run it
(:mod:`edge_agent.runtime.signature`); what it cannot tell (preprocessing,
labels, the decoder) comes from :class:`ImportOptions`, and a missing piece is
an :class:`ImportRejected` naming the flag to pass. The golden sample is the
model's own answer on the user's samples (images, .npy, JSON) or, without
samples, on seeded inputs, and the manifest says which. The tolerance follows
from each output's element type, with the reason written down. The drift
reference (``drift.json``) is written from the user's samples when they hold
enough rows (``drift_sample.MIN_REFERENCE_ROWS``); otherwise none, and the
import's report says why (seeded inputs only, too few rows).

``prepare`` checks everything and writes nothing; ``write_package`` writes a
package directory; ``import_model`` installs it into a store only when every
check passed, so a refused import leaves the store byte for byte as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.errors import EdgeAgentError, ImportRejected
from edge_agent.runtime import import_decoders as decoders
from edge_agent.runtime import import_rules as rules
from edge_agent.runtime.import_options import ImportOptions, Task
from edge_agent.runtime.package import (
    NAME_RE,
    VERSION_RE,
    Batching,
    Golden,
    ImagePreprocess,
    Manifest,
    Quantization,
    TensorSpec,
    save_golden,
    sha256_file,
    write_manifest,
)
from edge_agent.runtime.signature import Signature, TensorInfo, read_signature

if TYPE_CHECKING:
    from edge_agent.runtime.store import ModelStore

FP32_REL = 1e-4  # fp32 noise budget relative to the output's magnitude


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked import: the manifest (sha256 of golden still to come) and what to write."""

    model_path: Path
    manifest: Manifest
    golden_inputs: dict[str, np.ndarray]
    golden_outputs: dict[str, np.ndarray]
    drift_reference: dict[str, Any] | None = None  # written as drift.json beside the manifest
    drift_note: str = ""  # what was written, or why none was


def default_name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in path.stem.lower()).strip("_-")
    return stem[:64] or "model"


def _spec(t: TensorInfo) -> TensorSpec:
    return TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape, kind=t.kind)


def _tolerance(sig: Signature, outputs: dict[str, np.ndarray]) -> tuple[float, str]:
    """One atol for all outputs, and why: the loosest any output legitimately needs."""
    atol, parts = 0.0, []
    for t in sig.outputs:
        y = outputs[t.name]
        if t.quant is not None:
            a = 1.5 * t.quant.scale
            parts.append(
                f"{t.name}: {t.stored_dtype} quantized, one step = scale {t.quant.scale:.6g}; integer "
                f"kernels (reference vs XNNPACK/NEON requantization rounding) can move one step, "
                f"so 1.5 steps = {a:.6g}"
            )
        elif sig.qdq and np.issubdtype(y.dtype, np.floating):
            a, why = _qdq_tolerance(t.name, y)
            parts.append(why)
        elif np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            a = 0.0
            parts.append(
                f"{t.name}: {y.dtype} must match exactly (any atol below 1 cannot hide a changed value)"
            )
        else:
            mag = float(np.max(np.abs(y))) if y.size else 0.0
            a = FP32_REL * max(1.0, mag)
            parts.append(
                f"{t.name}: {y.dtype}, largest |value| {mag:.4g}; fp32 CPU kernels differ between machines "
                f"(FMA, accumulation order, x86 AVX vs ARM NEON) by far less than {FP32_REL:g} of the "
                f"magnitude, so atol = {FP32_REL:g} x max(1, {mag:.4g}) = {a:.3g}"
            )
        atol = max(atol, a)
    return round(atol, 9), "; ".join(parts) + f". One atol serves every output: the largest, {atol:.3g}."


def _qdq_tolerance(name: str, y: np.ndarray) -> tuple[float, str]:
    """A QDQ model's float output: one quantization step if the values sit on a grid, else 1 %."""
    values = np.unique(y.astype(np.float64).ravel())
    diffs = np.diff(values)
    step = float(diffs.min()) if diffs.size else 0.0
    mag = float(np.max(np.abs(values))) if values.size else 0.0
    if step > 0 and diffs.size >= 3 and np.allclose(diffs / step, np.round(diffs / step), atol=1e-3):
        a = 1.5 * step
        return a, (
            f"{name}: int8 QDQ model, its values are whole multiples of {step:.6g} (the output's "
            f"DequantizeLinear step, read from the golden outputs); another CPU's int8 kernels can "
            f"round one tie differently, so 1.5 steps = {a:.6g}"
        )
    a = 1e-2 * max(1.0, mag)
    return a, (
        f"{name}: int8 QDQ model whose output is not on a quantization grid (float ops follow the "
        f"last DequantizeLinear); an intermediate int8 tensor may round one step differently on "
        f"another CPU, so 1 % of the largest |value| {mag:.4g} = {a:.3g}"
    )


def _first_batch(sig: Signature) -> int | None:
    dims = {t.shape[0] if t.shape else None for t in sig.inputs}
    if dims == {None}:
        return None
    fixed = [d for d in dims if d is not None]
    return fixed[0] if fixed else 1


def _batching(sig: Signature, opts: ImportOptions) -> Batching:
    # As Triton's auto-complete: batch only when every input and output has a dynamic first dim.
    every = all(t.shape and t.shape[0] is None for t in [*sig.inputs, *sig.outputs])
    if every:
        return Batching(enabled=True, max_batch_size=opts.max_batch_size)
    return Batching(enabled=False, max_batch_size=max(1, _first_batch(sig) or 1))


def _draft(
    sig: Signature, path: Path, opts: ImportOptions, name: str, pre: ImagePreprocess | None
) -> Manifest:
    task: Task = opts.task or ("classification" if opts.postprocess == "classification" else "detection")
    quant = {t.name: t.quant for t in [*sig.inputs, *sig.outputs] if t.quant is not None}
    return Manifest(
        name=name,
        version=opts.version,
        description=opts.description or f"Imported from {path.name} by `edge-agent models import`.",
        backend=sig.backend,
        task=task,
        file="model.onnx" if sig.backend == "onnx" else "model.tflite",
        sha256=sha256_file(path),
        inputs=[_spec(t) for t in sig.inputs],
        outputs=[_spec(t) for t in sig.outputs],
        preprocessing=pre,
        labels=opts.labels,
        quantization=Quantization(
            scheme="int8_full_integer" if quant else "int8_static_qdq" if sig.qdq else "none",
            tensors=quant,
        ),
        golden=Golden(sha256="0" * 64, atol=0.0, tolerance_reason="pending"),
        batching=_batching(sig, opts),
        source=opts.source or f"Imported from the user's file {path.name} (sha256 {sha256_file(path)}).",
        license=opts.license,
    )


def prepare(path: Path, opts: ImportOptions, existing: set[tuple[str, str]] | None = None) -> Prepared:
    """Check everything about importing ``path``; write nothing. Raises ImportRejected."""
    path = Path(path)
    if not path.is_file():
        raise ImportRejected(f"{path}: no such file", reason="unreadable")
    name = opts.name or default_name(path)
    if not NAME_RE.match(name):
        raise ImportRejected(f"model name {name!r} must match {NAME_RE.pattern}; pass --name", flag="--name")
    if not VERSION_RE.match(opts.version):
        raise ImportRejected(f"version {opts.version!r} must match {VERSION_RE.pattern}", flag="--version")
    if existing is not None and (name, opts.version) in existing:
        raise ImportRejected(
            f"{name}/{opts.version} already exists in the store and versions are immutable; "
            f"pass another --version (or --name)",
            reason="exists",
            flag="--version",
        )
    if opts.postprocess == "none" and opts.task is None:
        raise ImportRejected(
            "without a decoder the task cannot be told: pass --task classification|detection "
            "(or --postprocess classification|yolo|ssd|blazeface)",
            flag="--task",
        )
    sig = read_signature(path)
    pre = rules.preprocessing(sig, opts)
    inputs, origin = rules.golden_inputs(sig, opts, pre)
    draft = _draft(sig, path, opts, name, pre)
    outputs = _run(path, draft, inputs)
    post = decoders.postprocessing(sig, opts, pre, outputs)
    atol, reason = _tolerance(sig, outputs)
    manifest = draft.model_copy(
        update={
            "postprocessing": post,
            "golden": Golden(sha256="0" * 64, atol=atol, tolerance_reason=reason, origin=origin),
        }
    )
    try:
        manifest = Manifest.model_validate(manifest.model_dump())
    except ValueError as exc:
        raise ImportRejected(
            f"the manifest made for {path.name} is invalid: {exc}", reason="manifest"
        ) from None
    decoders.check_decoder(manifest, outputs)
    reference, note = rules.drift_reference(sig, opts, pre)
    return Prepared(path, manifest, inputs, outputs, reference, note)


def _run(path: Path, manifest: Manifest, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden outputs, from the same backend class serving will use."""
    from edge_agent.runtime.backends import BackendOptions, get_backend

    try:
        model = get_backend(manifest.backend).load(path, manifest, BackendOptions())
        try:
            return model.infer(inputs)
        finally:
            model.close()
    except EdgeAgentError as exc:
        raise ImportRejected(
            f"{path.name}: running the model on the golden inputs failed: {exc.message}"
        ) from None


def write_package(prep: Prepared, dest: Path) -> Manifest:
    """Write model file, golden.npz, manifest.json and the drift reference (when there is one) into the
    empty directory ``dest``."""
    from edge_agent.runtime import drift_sample

    m = prep.manifest
    shutil.copyfile(prep.model_path, dest / m.file)
    if prep.drift_reference is not None:
        drift_sample.write(dest, prep.drift_reference)
    golden_sha = save_golden(dest, prep.golden_inputs, prep.golden_outputs)
    final = m.model_copy(update={"golden": m.golden.model_copy(update={"sha256": golden_sha})})
    final = Manifest.model_validate(final.model_dump())
    write_manifest(dest, final)
    return final


def build_package(path: Path, opts: ImportOptions, dest: Path) -> Manifest:
    """prepare + write_package (the cloud's `models publish FILE` path)."""
    return write_package(prepare(path, opts), dest)


def import_model(store: ModelStore, path: Path, opts: ImportOptions) -> tuple[Manifest, str]:
    """Prepare, then install into ``store`` through a temporary directory; returns the manifest and
    the drift note (the reference written, or why none was)."""
    existing = {(n, v) for n in store.names() for v in store.versions(n)}
    name = opts.name or default_name(Path(path))
    if (store.root / name / opts.version).exists():  # even a half-written leftover counts
        existing.add((name, opts.version))
    prep = prepare(path, opts, existing)
    with tempfile.TemporaryDirectory(prefix="edge-import-") as tmp:
        final = write_package(prep, Path(tmp))
        store.install(Path(tmp))
    return final, prep.drift_note
