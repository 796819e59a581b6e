"""``edge-agent models quantize``: an fp32 ONNX model -> int8 (static QDQ, per-channel), checked.

Steps, and nothing is written until every one has passed:

1. the source version (default: the active one) must be an ONNX fp32 package;
2. the calibration set and the evaluation set (:mod:`edge_agent.tools.evalset`) are read and
   checked against the model's inputs;
3. ``onnxruntime.quantization``: ``quant_pre_process`` then ``quantize_static`` with
   ``QuantFormat.QDQ``, per-channel int8 weights (symmetric), int8 activations (asymmetric),
   MinMax calibration over the calibration rows (as ``models/scripts/build_digits.py`` made
   ``digits_int8``); with ``fp32_tail = N`` the last N weighted layers (Conv, MatMul, Gemm)
   before the outputs, and every node between them and the outputs, stay in float
   (``nodes_to_exclude``): a detector's regressors and score logits keep their precision;
4. a complete package is built in a temporary directory: the int8 model, a golden sample
   (the source's golden inputs, the int8 model's outputs, a tolerance of 1.5 output
   quantization steps), a manifest valid for :mod:`edge_agent.runtime.package`, sha256s;
   it is loaded and self-tested like any package;
5. both models run on the evaluation set: top-1 agreement per row (a classifier's class; a
   detector's best-scoring detection: same label and IoU >= 0.5, or both find nothing),
   accuracy of both when a classifier's set has labels, size, and median inference latency
   at batch 1 and 32;
6. under the agreement threshold -> ``QualityGateFailed``, nothing written; else the package
   is installed as a new version of the same model (not activated unless asked).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput, PackageError, QualityGateFailed, ToolsUnavailable
from edge_agent.runtime.backends import BackendOptions, get_backend
from edge_agent.runtime.backends.onnx import load_ort
from edge_agent.runtime.package import (
    Manifest,
    load_golden,
    save_golden,
    sha256_file,
    write_manifest,
)
from edge_agent.runtime.store import ModelStore, self_test
from edge_agent.tools.agreement import DEFAULT_THRESHOLD, QuantizeReport, measure
from edge_agent.tools.evalset import EvalSet, load_set

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'edge-agent[tools]'  (or: pip install onnx)"
CALIBRATION_BATCH = 16


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    version: str | None = None  # default: next integer version
    threshold: float = DEFAULT_THRESHOLD
    activate: bool = False
    timing_seconds: float = 0.5
    fp32_tail: int = 0  # weighted layers nearest the outputs kept in float, with all after them

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(f"the agreement threshold must be 0..100 %, got {self.threshold * 100:g} %")
        if self.fp32_tail < 0:
            raise InvalidInput(f"--fp32-tail must be 0 or more layers, got {self.fp32_tail}")

    def describe(self) -> str:
        if not self.fp32_tail:
            return "static QDQ, per-channel"
        return f"static QDQ, per-channel, last {self.fp32_tail} weighted layers and after in float"


def _tools() -> tuple[Any, Any]:
    """(onnxruntime.quantization, its shape_inference); ToolsUnavailable naming the fix."""
    try:
        importlib.import_module("onnx")
        load_ort()  # telemetry off before onnxruntime is first imported
        quant = importlib.import_module("onnxruntime.quantization")
        shape = importlib.import_module("onnxruntime.quantization.shape_inference")
    except ImportError as exc:
        raise ToolsUnavailable(
            f"models quantize needs the optional model tools ({exc.name or exc} is not installed); "
            f"install them with: {INSTALL_HINT}"
        ) from None
    return quant, shape


def next_version(store: ModelStore, name: str) -> str:
    numbers = [int(v) for v in store.versions(name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration rows."""

    def __init__(self, data: EvalSet, step: int) -> None:
        self._batches = iter([data.take(i, i + step) for i in range(0, data.rows, step)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # MinMax reads the rows once
        pass


WEIGHTED_OPS = frozenset({"Conv", "MatMul", "Gemm", "ConvTranspose"})


def float_tail(path: Path, layers: int) -> list[str]:
    """Names of the nodes met walking back from the outputs, breadth first, until ``layers``
    weighted layers are among them: what stays in float with ``fp32_tail``."""
    if layers == 0:
        return []
    onnx = importlib.import_module("onnx")
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    frontier = [o.name for o in graph.output]
    kept: list[str] = []
    seen: set[str] = set()
    found = 0
    while frontier and found < layers:
        node = producer.get(frontier.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        kept.append(node.name)
        found += node.op_type in WEIGHTED_OPS
        frontier.extend(node.input)
    if found < layers:
        raise InvalidInput(
            f"--fp32-tail {layers}: the model has only {found} weighted layers before its outputs"
        )
    return kept


def _quantize_file(src: Path, dest: Path, calib: EvalSet, step: int, work: Path, fp32_tail: int = 0) -> None:
    quant, shape = _tools()
    pre = work / "pre.onnx"
    try:
        importlib.import_module("sympy")
        symbolic = True
    except ImportError:
        symbolic = False  # symbolic shape inference needs sympy; ONNX shape inference still runs
    try:
        shape.quant_pre_process(str(src), str(pre), skip_symbolic_shape=not symbolic)
        exclude = float_tail(pre, fp32_tail)
        quant.quantize_static(
            str(pre),
            str(dest),
            _Reader(calib, step),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quant.QuantType.QInt8,
            weight_type=quant.QuantType.QInt8,
            calibrate_method=quant.CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    except InvalidInput:
        raise
    except Exception as exc:  # onnx / onnxruntime raise many kinds; translate once, here
        raise PackageError(f"onnxruntime could not quantize {src.name}: {exc}") from None


def output_steps(path: Path, names: list[str]) -> dict[str, float]:
    """Scale of the DequantizeLinear producing each output (absent: not a quantized output)."""
    onnx = importlib.import_module("onnx")
    numpy_helper = importlib.import_module("onnx.numpy_helper")
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    steps: dict[str, float] = {}
    for node in model.graph.node:
        for out in node.output:
            if out in names and node.op_type == "DequantizeLinear" and node.input[1] in inits:
                steps[out] = float(np.max(inits[node.input[1]]))
    return steps


def _golden_tolerance(path: Path, outputs: dict[str, np.ndarray]) -> tuple[float, str]:
    steps = output_steps(path, list(outputs))
    if steps and set(steps) == set(outputs):
        step = max(steps.values())
        return round(1.5 * step, 6), (
            f"int8 QDQ model: outputs come out of a DequantizeLinear with scale up to {step:.6g}, so "
            "they move in whole steps of it. Integer kernels are exact, but a CPU whose execution "
            "provider fuses the QDQ pattern differently can tip one rounding tie; atol = 1.5 output "
            "steps allows one step plus float noise."
        )
    peak = max(float(np.max(np.abs(v))) if v.size else 0.0 for v in outputs.values())
    return round(max(1e-3, 1e-2 * peak), 6), (
        "int8 QDQ model whose outputs are computed in float after the last DequantizeLinear: "
        "1 % of the largest golden output magnitude (at least 1e-3) covers a rounding tie tipped "
        "by a different CPU kernel upstream, while a wrong model moves them far more."
    )


def _build_package(
    src_dir: Path, src: Manifest, version: str, work: Path, calib: EvalSet, step: int, tail: int
) -> tuple[Path, Manifest]:
    """A complete, verified candidate package in ``work/pkg`` (nothing in the store yet)."""
    pkg = work / "pkg"
    pkg.mkdir()
    file_name = f"{Path(src.file).stem}_int8.onnx"
    _quantize_file(src_dir / src.file, pkg / file_name, calib, step, work, tail)
    for extra in src_dir.iterdir():  # licence and notice files travel with the derived model
        if extra.is_file() and extra.name not in {src.file, src.golden.file, "manifest.json"}:
            shutil.copy2(extra, pkg / extra.name)
    golden_in, _ = load_golden(src_dir, src)
    sha = sha256_file(pkg / file_name)
    draft = _manifest(src, version, file_name, sha, "0" * 64, 0.0, "draft", calib, tail)
    model = get_backend("onnx").load(pkg / file_name, draft, BackendOptions())
    try:
        golden_out = model.infer(golden_in)
    finally:
        model.close()
    atol, reason = _golden_tolerance(pkg / file_name, golden_out)
    golden_sha = save_golden(pkg, golden_in, golden_out)
    manifest = _manifest(src, version, file_name, sha, golden_sha, atol, reason, calib, tail)
    write_manifest(pkg, manifest)
    return pkg, manifest


def _manifest(
    src: Manifest,
    version: str,
    file_name: str,
    sha: str,
    golden_sha: str,
    atol: float,
    reason: str,
    calib: EvalSet,
    tail: int,
) -> Manifest:
    ort = load_ort()
    kept = (
        f"; the last {tail} weighted layers before the outputs, and all after them, kept in float"
        if tail
        else ""
    )
    data = src.model_dump(mode="json")
    data.update(
        version=version,
        file=file_name,
        sha256=sha,
        description=f"{src.description} int8 (static QDQ, per-channel{kept}), from version {src.version}.",
        quantization={
            "scheme": "int8_static_qdq",
            "per_channel": True,
            "calibration": calib.description + kept,
        },
        metrics=None,
        golden={"sha256": golden_sha, "atol": atol, "rtol": 0.0, "tolerance_reason": reason},
        source=(
            f"{src.name}/{src.version} quantized by `edge-agent models quantize` with onnxruntime "
            f"{ort.__version__} quantize_static (QuantFormat.QDQ, per-channel int8 weights symmetric, "
            f"int8 activations asymmetric, MinMax calibration{kept}) after quant_pre_process. "
            f"Source: {src.source}"
        ),
    )
    return Manifest.model_validate(data)


def quantize(
    store: ModelStore,
    name: str,
    calibration: Path,
    evaluation: Path | None = None,
    *,
    source_version: str | None = None,
    options: QuantizeOptions | None = None,
) -> QuantizeReport:
    """Quantize ``name`` (an fp32 ONNX package) into a new version; raise before writing on failure."""
    options = options or QuantizeOptions()
    src = store.verify(name, source_version)
    if src.backend != "onnx" or src.quantization.scheme != "none":
        raise PackageError(
            f"{name}/{src.version} is a {src.backend} model quantized as {src.quantization.scheme!r}; "
            "models quantize takes fp32 ONNX models (backend onnx, quantization scheme none)"
        )
    if any(t.dtype != "float32" for t in src.inputs):
        raise PackageError(f"{name}/{src.version}: models quantize takes models with float32 inputs only")
    version = options.version or next_version(store, name)
    if version in store.versions(name):
        raise PackageError(f"{name}/{version} already exists; versions are immutable (pick --version)")
    _tools()
    calib = load_set(calibration, src, "calibration set")
    data = calib if evaluation is None else load_set(evaluation, src, "evaluation set")
    src_dir = store.package_dir(name, src.version)
    fp32, _ = store.load(name, src.version, BackendOptions())
    step = fp32.max_batch or CALIBRATION_BATCH
    report = QuantizeReport(
        name,
        src.version,
        version,
        calib.description,
        data.description + ("" if evaluation else " (the calibration set: no --eval given)"),
        threshold=options.threshold,
        scheme=options.describe(),
    )
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        pkg, manifest = _build_package(src_dir, src, version, Path(tmp), calib, step, options.fp32_tail)
        int8 = get_backend("onnx").load(pkg / manifest.file, manifest, BackendOptions())
        try:
            check = self_test(int8, pkg)
            if not check.passed:
                raise PackageError(f"the quantized model failed its own golden self-test: {check.message}")
            measure(report, fp32, int8, data, src, options.timing_seconds)
            report.size_bytes = {
                "fp32": (src_dir / src.file).stat().st_size,
                "int8": (pkg / manifest.file).stat().st_size,
            }
        finally:
            int8.close()
            fp32.close()
        if report.agreement < options.threshold:
            raise QualityGateFailed(
                f"{name} int8 agrees with fp32 on {report.agreement:.2%} of {data.rows} rows, under the "
                f"threshold of {options.threshold:.2%}: version {version} not written. Try a calibration "
                "set closer to real inputs, or lower --threshold if that loss is acceptable.",
                report=report.to_dict(),
            )
        if report.accuracy is not None:
            _with_metrics(manifest, pkg, report, report.accuracy, data.rows)
        if not store.is_pinned(name):
            # with no recorded choice the newest version serves: pin the current one first, so
            # writing the new version does not activate it behind the operator's back
            store.set_active(name, store.active_version(name))
        store.install(pkg)
    report.written = True
    return report


def _with_metrics(
    manifest: Manifest, pkg: Path, report: QuantizeReport, accuracy: dict[str, float], rows: int
) -> None:
    """Record the evaluation in the candidate's manifest (labels given: accuracies known)."""
    data = manifest.model_dump(mode="json")
    data["metrics"] = {
        "dataset": report.evaluation,
        "heldout_size": rows,
        "heldout_accuracy": accuracy["int8"],
        "extra": {"agreement_with_fp32": report.agreement, "fp32_accuracy": accuracy["fp32"]},
    }
    write_manifest(pkg, Manifest.model_validate(data))
