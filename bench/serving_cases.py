"""Serving benchmark (bench/serving.py): its settings, the models, their inputs in every request format
and the raw runtime's reference answers."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import heavy_model, loadgen, naive_server
from edge_agent.runtime.package import Classification, Detection, Manifest, load_golden, read_manifest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DEFAULT_MODELS = ("digits_int8", "face", heavy_model.NAME)
DEFAULT_CONCURRENCY = (1, 8, 64)
RAW_BATCHES = (1, 8, 32, 64)
FACE_BATCHING = {"enabled": True, "max_batch_size": 16}
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
NO_CACHE_VAR = "EDGE_CACHE__PREDICTION_ENABLED"
QUIET_CORES = 0.15  # other processes busier than this (in cores) make a measurement noisy
DISTURBED = 0.10  # rows measured with more than this much other CPU get flagged
TARGET_TINY_VS_NAIVE = 2.0
TARGET_HEAVY_VS_RAW = 0.90  # binary tensors
TARGET_HEAVY_JSON_VS_RAW = 0.85
TARGET_IDLE_P50 = 0.8

PATH_LABEL = {
    "a": "(a) raw runtime",
    "b": "(b) naive FastAPI",
    "c": "(c) gateway, batching off",
    "d": "(d) gateway, batching on",
}
FORMAT_LABEL = {
    "tensor": "in-process",
    "json": "JSON",
    "bin": "binary v2",
    "png": "PNG",
    "npy": ".npy",
    "v2json": "JSON v2",
}
GATEWAY_FORMATS = ("json", "bin", "png", "npy", "v2json")


@dataclass(frozen=True, slots=True)
class Budget:
    warmup_s: float  # per HTTP cell, discarded
    duration_s: float  # per HTTP cell, measured
    raw_s: float  # per batch size of (a)
    pause_s: float  # between cells


FULL = Budget(warmup_s=1.0, duration_s=4.0, raw_s=1.5, pause_s=0.3)
QUICK = Budget(warmup_s=0.1, duration_s=0.3, raw_s=0.1, pause_s=0.05)


# -- models, inputs, reference answers ------------------------------------------------------------
@dataclass
class Case:
    """One model: its package in the benchmark's store, inputs and the raw runtime's answers."""

    name: str
    manifest: Manifest
    store: Path  # model store root holding only this model
    model_file: Path
    runner: naive_server.Runner
    inputs: np.ndarray  # [K, ...] one sample per row, float32
    expected: list[dict[str, Any]]  # per input: answers for tensor requests
    pngs: list[bytes] = field(default_factory=list)
    expected_png: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rank(self) -> int:
        """Dimensions of the model input, batch axis included (``inputs`` stacks samples)."""
        return int(self.inputs.ndim)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return out


def _boxes(manifest: Manifest, raw: dict[str, np.ndarray], geometry: Any) -> list[list[float]]:
    from edge_agent.runtime.postprocess import postprocess

    (row,) = postprocess(manifest, raw, [geometry])
    return [[b["score"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in row["boxes"]]


def _expectation(
    case_manifest: Manifest, runner: naive_server.Runner, x: np.ndarray, geometry: Any
) -> dict[str, Any]:
    """The raw runtime's answer to one sample (batch of 1), and how close an answer must be."""
    m = case_manifest
    outs = runner.run(np.ascontiguousarray(x[None], dtype=np.float32))
    raw = dict(zip(runner.output_names, outs, strict=True))
    exp: dict[str, Any] = {"raw": raw, "atol": m.golden.atol, "rtol": m.golden.rtol, "classification": None}
    post = m.postprocessing
    if isinstance(post, Classification):
        logits = raw[post.output][0].astype(np.float32)
        exp["classification"] = post.output
        exp["probs"] = _softmax(logits) if post.apply_softmax else logits
        exp["prob_atol"] = m.golden.atol / 2 if post.apply_softmax else m.golden.atol
    elif isinstance(post, Detection):
        exp["boxes"] = _boxes(m, raw, geometry)
    return exp


def _face_images() -> list[bytes]:
    """PNG variants of the bundled face sample: crops, flips, scales (distinct inputs)."""
    import cv2

    img = cv2.imread(str(MODELS / "face" / "1" / "samples" / "astronaut.png"), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    variants = [
        img,
        img[:, ::-1],
        img[h // 8 : h - h // 8, w // 8 : w - w // 8],
        img[: 3 * h // 4, : 3 * w // 4],
        img[h // 4 :, w // 4 :],
        cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
        img[: 3 * h // 4, w // 8 :][:, ::-1],
        np.ascontiguousarray(img[:, : 5 * w // 6]),
    ]
    out = []
    for v in variants:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(v))
        if not ok:
            raise RuntimeError("cv2 cannot encode PNG")
        out.append(buf.tobytes())
    return out


def prepare_case(name: str, root: Path) -> Case:
    """Copy (or build) the package into ``root/<name>``, load the raw runtime, compute answers."""
    store = root / f"store-{name}"
    if name == heavy_model.NAME:
        pkg = heavy_model.build_package(store)
    else:
        src = MODELS / name
        if not src.is_dir():
            raise SystemExit(f"unknown model {name!r}")
        shutil.copytree(src, store / name)
        versions = sorted(p for p in (store / name).iterdir() if (p / "manifest.json").is_file())
        pkg = versions[-1]
    m = read_manifest(pkg)
    runner = naive_server.load_runner(pkg / m.file)
    golden_in, _ = load_golden(pkg, m)
    pngs: list[bytes] = []
    expected_png: list[dict[str, Any]] = []
    if name == heavy_model.NAME:
        inputs = heavy_model.sample_inputs(32)
    elif m.preprocessing is not None and isinstance(m.postprocessing, Detection):
        from edge_agent.runtime.preprocess import preprocess

        pngs = _face_images()
        pre = [preprocess(p, m.preprocessing) for p in pngs]
        inputs = np.stack([t for t, _ in pre])
        expected_png = [_expectation(m, runner, t, g) for t, g in pre]
    else:
        rows = [golden_in[m.inputs[0].name]]
        sample = pkg / "samples" / "batch.npy"
        if sample.is_file():
            rows.append(np.load(sample).astype(np.float32))
        inputs = np.concatenate(rows).astype(np.float32)
    expected = [_expectation(m, runner, x, None) for x in inputs]
    return Case(name, m, store, pkg / m.file, runner, inputs, expected, pngs, expected_png)


# -- request bodies -------------------------------------------------------------------------------
def _json_body(x: np.ndarray) -> bytes:
    return orjson.dumps({"data": x[None]}, option=orjson.OPT_SERIALIZE_NUMPY)


def _v2_binary(case: Case, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(x[None], dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": case.manifest.inputs[0].name,
                    "shape": [1, *x.shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": t.name, "parameters": {"binary_data": True}} for t in case.manifest.outputs],
        }
    )
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _v2_json(case: Case, x: np.ndarray) -> bytes:
    doc = {
        "inputs": [
            {
                "name": case.manifest.inputs[0].name,
                "shape": [1, *x.shape],
                "datatype": "FP32",
                "data": x.reshape(-1),
            }
        ],
        "outputs": [{"name": t.name} for t in case.manifest.outputs],
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x[None], dtype=np.float32))
    return buf.getvalue()


def requests_for(case: Case, path: str, fmt: str, port: int) -> tuple[list[bytes], str, list[dict[str, Any]]]:
    """Pre-serialised HTTP requests (one per input), the loadgen check kind, the expectations."""
    host = "127.0.0.1"
    json_h = {"Content-Type": "application/json"}
    v1 = f"/v1/models/{case.name}/predict"
    v2 = f"/v2/models/{case.name}/infer"
    out: list[bytes] = []
    if path == "b":
        out = [
            loadgen.build_request("POST", host, port, "/predict", _json_body(x), json_h) for x in case.inputs
        ]
        return out, "naive", case.expected
    if fmt == "json":
        out = [loadgen.build_request("POST", host, port, v1, _json_body(x), json_h) for x in case.inputs]
        return out, "v1", case.expected
    if fmt == "npy":
        npy_h = {"Content-Type": "application/x-npy"}
        out = [loadgen.build_request("POST", host, port, v1, _npy(x), npy_h) for x in case.inputs]
        return out, "v1", case.expected
    if fmt == "bin":
        for x in case.inputs:
            body, headers = _v2_binary(case, x)
            out.append(loadgen.build_request("POST", host, port, v2, body, headers))
        return out, "v2", case.expected
    if fmt == "v2json":
        out = [loadgen.build_request("POST", host, port, v2, _v2_json(case, x), json_h) for x in case.inputs]
        return out, "v2", case.expected
    if fmt == "png":
        png_h = {"Content-Type": "image/png"}
        out = [loadgen.build_request("POST", host, port, v1, p, png_h) for p in case.pngs]
        return out, "v1", case.expected_png
    raise ValueError(fmt)
