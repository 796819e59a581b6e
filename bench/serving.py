"""Serving benchmark: what HTTP serving costs on top of the raw runtime, and what batching buys.

One run, one table: for each model (``digits_int8``, the tiny int8 ONNX classifier whose
HTTP path is the whole cost; ``face``, the BlazeFace TFLite detector, fixed batch 1;
``heavy_cnn``, a CNN of about 1.6 ms per inference built here with random weights by
``bench/heavy_model.py``) and each concurrency (default 1, 8, 64) it measures:

(a) the raw runtime in this process (bare ``InferenceSession.run`` / LiteRT ``invoke``), at
    the batch size (of 1, 8, 32, 64 the model accepts) with the best rows/s: the limit;
(b) ``bench/naive_server.py``: a plain FastAPI endpoint with a pydantic ``{"data": ...}``
    body that calls the runtime once per request (the book's design);
(c) this gateway (``edge-agent serve``) with batching off (``EDGE_BATCHING``);
(d) the gateway with batching on (each model's manifest settings; ``face``, whose manifest
    turns batching off because its batch is fixed at 1, gets ``max_batch_size`` 16: the
    batcher gathers requests, the runtime still runs them one invoke each);

(c) and (d) with a JSON body (v1 ``{"data": [[...]]}``, the very bytes (b) gets) and with
binary tensors (v2 binary tensor extension: JSON header + raw little-endian FP32, binary
outputs back); ``face`` also with its PNG (v1 ``image/png`` body: decode + letterbox on
the server). Load comes from ``bench/loadgen.py``, a separate process on another core,
over real HTTP; servers are pinned to one core, the load generator to another. Every
answer is checked against the raw runtime's answer for the same input (tolerances: each
package's golden ``atol``/``rtol``; see loadgen.py). Mean batch size comes from the
gateway's ``/metrics``.

    .venv/bin/python bench/serving.py                       # everything, about 7 minutes
    .venv/bin/python bench/serving.py --nice -10            # on a shared machine (root)
    .venv/bin/python bench/serving.py --quick               # short windows, about a minute
    .venv/bin/python bench/serving.py --models digits_int8 --concurrency 1,8 --requests 50

The gateway's prediction cache is turned off (the inputs repeat). Other processes' CPU use
during every window is measured and shown: before each measurement the benchmark waits for a
quiet machine (at most 20 s each, 120 s in all), and ``--nice -10`` gives the benchmark and
its processes a session of their own at a higher priority, so that a busy machine disturbs
the figures less (rows measured beside more than 0.1 core of other work are flagged).

Exit status: 0 when every cell ran and every answer was right (targets met or not), 1 when
some answer was wrong or a cell failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

# Run a command so that it gets SIGTERM when this process dies (even by SIGKILL): no server
# outlives the benchmark. argv: parent pid, command...
_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


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


# -- processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: Sequence[str], core: int | None, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = [sys.executable, "-c", _PDEATHSIG, str(os.getpid())]
    if core is not None and shutil.which("taskset"):
        full += ["taskset", "-c", str(core)]
    with log.open("wb") as fh:
        return subprocess.Popen([*full, *cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pin_all_threads(pid: int, core: int | None) -> None:
    """Pin every thread of ``pid`` (threads started later inherit it from their creator)."""
    if core is None:
        return
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {core})


class QuietGate:
    """Before a measurement, wait until other processes use under QUIET_CORES of CPU, at most
    ``each_s`` per measurement and ``total_s`` per run (a busy shared machine must not stall the
    benchmark for hours: past the budget it measures anyway, and the rows say how noisy it was)."""

    def __init__(self, each_s: float, total_s: float, log: Callable[[str], None]) -> None:
        self.each_s = each_s
        self.left_s = total_s
        self.log = log

    def wait(self) -> float:
        t0 = time.monotonic()
        limit = min(self.each_s, self.left_s)
        said = False
        while True:
            j0 = loadgen.cpu_jiffies()
            time.sleep(0.3)
            busy = loadgen.busy_cores(j0, loadgen.cpu_jiffies())
            waited = time.monotonic() - t0
            if busy < QUIET_CORES or waited >= limit:
                self.left_s = max(0.0, self.left_s - waited)
                if said or (busy >= QUIET_CORES and limit > 0):
                    state = "quiet" if busy < QUIET_CORES else "still busy, measuring anyway"
                    self.log(f"    other processes use {busy:.2f} cores after {waited:.0f} s: {state}")
                return busy
            if not said:
                self.log(f"    other processes use {busy:.2f} cores: waiting up to {limit:.0f} s for quiet")
                said = True


@dataclass
class Server:
    label: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}


@contextlib.contextmanager
def running(
    label: str,
    cmd: Sequence[str],
    ready_path: str,
    port: int,
    core: int | None,
    env: dict[str, str],
    log: Path,
) -> Iterator[Server]:
    proc = spawn(cmd, core, env, log)
    server = Server(label, port, proc, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://127.0.0.1:{port}{ready_path}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode}:\n{server.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} not ready in {READY_TIMEOUT_S:.0f} s:\n{server.tail()}")
            time.sleep(0.1)
        pin_all_threads(proc.pid, core)
        yield server
    finally:
        stop(proc)


def gateway(case: Case, batching: dict[str, Any], core: int | None, tmp: Path, label: str) -> Any:
    port = free_port()
    data_dir = tmp / f"data-{case.name}-{port}"
    data_dir.mkdir(parents=True)
    env = _clean_env() | {
        "EDGE_BATCHING": json.dumps({case.name: batching}),
        "EDGE_LOG_LEVEL": "WARNING",
        "EDGE_DEFAULT_MODEL": case.name,
    }
    env.update(_no_cache_env())
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--model-dir",
        str(case.store),
        "--data-dir",
        str(data_dir),
        "serve",
        "--port",
        str(port),
    ]
    return running(label, cmd, "/v2/health/ready", port, core, env, tmp / f"{label}-{port}.log")


def _no_cache_env() -> dict[str, str]:
    """Turn the gateway's prediction cache off (when this version has one): the benchmark cycles
    through a few inputs, so a cache would answer from memory instead of running the model."""
    from edge_agent import config as agent_config

    known = set(getattr(agent_config, "ENV_VARS", {})) | set(getattr(agent_config, "SECTION_ENV_VARS", {}))
    return {NO_CACHE_VAR: "false"} if NO_CACHE_VAR in known else {}


def naive(case: Case, core: int | None, tmp: Path) -> Any:
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "naive_server.py"),
        "--model",
        str(case.model_file),
        "--rank",
        str(case.rank),
        "--port",
        str(port),
    ]
    return running("naive", cmd, "/health", port, core, _clean_env(), tmp / f"naive-{case.name}-{port}.log")


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    path: str  # a, b, c, d
    fmt: str
    concurrency: int | None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_batch: float | None = None
    checked: int = 0
    wrong: int = 0
    errors: int = 0
    server_cpu: float | None = None
    client_cpu: float | None = None
    other_cpu: float | None = None
    cache_hits: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    wrong_examples: list[str] = field(default_factory=list)
    failure: str | None = None
    vs_naive: float | None = None
    vs_raw: float | None = None


def run_raw(case: Case, budget_s: float, core: int | None) -> tuple[Row, dict[int, float]]:
    """(a): the raw runtime in this process, pinned to the server core; best of the batch sizes."""
    old = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    k = len(case.inputs)
    fixed = case.runner.fixed_batch
    sizes = [fixed] if fixed else list(RAW_BATCHES)
    per_size: dict[int, float] = {}
    best: Row | None = None
    other = 0.0
    try:
        for b in sizes:
            batches = [np.arange(j * b, (j + 1) * b) % k for j in range(min(k, 8))]
            xs = [np.ascontiguousarray(case.inputs[ix]) for ix in batches]
            for x in xs[:2]:
                case.runner.run(x)  # warm-up: allocations, kernel selection
            times: list[float] = []
            row = Row(case.name, "a", "tensor", None)
            jif0, cpu0, wall0 = loadgen.cpu_jiffies(), time.process_time(), time.perf_counter()
            end = time.perf_counter() + budget_s
            j = 0
            while time.perf_counter() < end or len(times) < 5:
                x, ix = xs[j % len(xs)], batches[j % len(xs)]
                t0 = time.perf_counter()
                outs = case.runner.run(x)
                times.append(time.perf_counter() - t0)
                j += 1
                for r, i in enumerate(ix):  # every row checked, outside the timed call
                    row.checked += 1
                    problem = _check_raw_row(case.runner.output_names, outs, r, case.expected[int(i)])
                    if problem:
                        row.wrong += 1
                        if len(row.wrong_examples) < loadgen.MAX_WRONG_EXAMPLES:
                            row.wrong_examples.append(f"batch {b} row {r}: {problem}")
            wall = time.perf_counter() - wall0
            own = (time.process_time() - cpu0) / wall
            row.other_cpu = round(max(0.0, loadgen.busy_cores(jif0, loadgen.cpu_jiffies()) - own), 3)
            other = max(other, row.other_cpu)
            t = np.array(times)
            row.rps = b * len(t) / float(t.sum())
            row.p50_ms = float(np.percentile(t, 50) * 1000)
            row.p99_ms = float(np.percentile(t, 99) * 1000)
            row.mean_batch = float(b)
            per_size[b] = row.rps
            if best is None or row.rps > (best.rps or 0.0):
                if best is not None:
                    row.checked += best.checked
                    row.wrong += best.wrong
                    row.wrong_examples = best.wrong_examples + row.wrong_examples
                best = row
            else:
                best.checked += row.checked
                best.wrong += row.wrong
                best.wrong_examples += row.wrong_examples
    finally:
        os.sched_setaffinity(0, old)
    assert best is not None
    best.wrong_examples = best.wrong_examples[: loadgen.MAX_WRONG_EXAMPLES]
    best.other_cpu = other
    return best, per_size


def _check_raw_row(names: list[str], outs: list[np.ndarray], r: int, exp: dict[str, Any]) -> str | None:
    for name, arr in zip(names, outs, strict=True):
        want = exp["raw"][name]
        got = arr[r : r + 1]
        problem = loadgen.close_enough(got, want, exp["atol"], exp["rtol"])
        if problem is None and exp.get("classification") == name:
            problem = loadgen.top_class(got, want, exp["atol"])
        if problem:
            return f"output {name}: {problem}"
    return None


def run_load(
    case: Case,
    server: Server,
    path: str,
    fmt: str,
    concurrency: Sequence[int],
    budget: Budget,
    requests: int | None,
    client_core: int | None,
    tmp: Path,
) -> list[Row]:
    reqs, kind, expected = requests_for(case, path, fmt, server.port)
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "requests": reqs,
        "check": kind,
        "expected": expected,
        "concurrency": list(concurrency),
        "warmup_s": budget.warmup_s,
        "duration_s": budget.duration_s,
        "requests_per_cell": requests,
        "pause_s": budget.pause_s,
        "metrics_path": "/metrics" if path in ("c", "d") else None,
        "model": case.name,
        "server_pid": server.proc.pid,
        "core": client_core,
    }
    spec_path = tmp / f"spec-{case.name}-{path}-{fmt}.pkl"
    out_path = spec_path.with_suffix(".json")
    with spec_path.open("wb") as fh:
        pickle.dump(spec, fh)
    per_cell = budget.warmup_s + budget.duration_s + budget.pause_s + 30.0
    if requests is not None:
        per_cell = 120.0
    log = spec_path.with_suffix(".log")
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), str(spec_path), str(out_path)]
    proc = spawn(cmd, client_core, os.environ.copy(), log)
    try:
        proc.wait(timeout=60 + per_cell * len(concurrency))
    except subprocess.TimeoutExpired:
        stop(proc)
    finally:
        stop(proc)
    rows: list[Row] = []
    if proc.returncode != 0 or not out_path.is_file():
        msg = f"load generator failed ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}"
        return [Row(case.name, path, fmt, c, failure=msg) for c in concurrency]
    for cell in json.loads(out_path.read_text()):
        rows.append(
            Row(
                case.name,
                path,
                fmt,
                cell["concurrency"],
                rps=cell["rps"],
                p50_ms=cell["p50_ms"],
                p99_ms=cell["p99_ms"],
                mean_batch=cell["mean_batch"],
                checked=cell["checked"],
                wrong=cell["wrong"],
                errors=cell["errors"],
                server_cpu=cell["server_cpu"],
                client_cpu=cell["client_cpu"],
                other_cpu=cell["other_cpu"],
                cache_hits=cell["cache_hits"],
                stage_ms=cell["stage_ms"],
                wrong_examples=cell["wrong_examples"],
            )
        )
    return rows


# -- the run ---------------------------------------------------------------------------------------
def bench_model(
    case: Case,
    args: argparse.Namespace,
    budget: Budget,
    cores: tuple[int | None, int | None],
    tmp: Path,
    log: Callable[[str], None],
    gate: QuietGate,
) -> list[Row]:
    server_core, client_core = cores
    rows: list[Row] = []
    conc = args.concurrency
    if "a" in args.paths:
        gate.wait()
        raw, per_size = run_raw(case, budget.raw_s, server_core)
        sizes = ", ".join(f"b{b}: {v:,.0f}" for b, v in per_size.items())
        log(f"  (a) raw runtime rows/s by batch size: {sizes}")
        rows.append(raw)
    formats = [f for f in args.formats if f != "png" or case.pngs]

    def load(server: Server, path: str, fmts: Sequence[str]) -> None:
        for fmt in fmts:
            gate.wait()
            t0 = time.monotonic()
            got = run_load(case, server, path, fmt, conc, budget, args.requests, client_core, tmp)
            rows.extend(got)
            summary = ", ".join(
                f"c{r.concurrency}: {r.rps or 0:,.0f} req/s"
                + (f" FAILED {r.failure[:200]}" if r.failure else "")
                for r in got
            )
            log(f"  {PATH_LABEL[path]} {FORMAT_LABEL[fmt]}: {summary} ({time.monotonic() - t0:.0f} s)")

    def guarded(path: str, start: Callable[[], Any], fmts: Sequence[str]) -> None:
        try:
            with start() as server:
                load(server, path, fmts)
        except RuntimeError as exc:
            log(f"  {PATH_LABEL[path]}: {exc}")
            rows.extend(Row(case.name, path, f, c, failure=str(exc)[:500]) for f in fmts for c in conc)

    if "b" in args.paths:
        guarded("b", lambda: naive(case, server_core, tmp), ["json"])
    if "c" in args.paths:
        guarded("c", lambda: gateway(case, {"enabled": False}, server_core, tmp, "gateway-off"), formats)
    if "d" in args.paths:
        on = FACE_BATCHING if case.runner.fixed_batch else {"enabled": True}
        guarded("d", lambda: gateway(case, on, server_core, tmp, "gateway-on"), formats)
    return rows


def add_ratios(rows: list[Row]) -> None:
    naive_rps = {(r.model, r.concurrency): r.rps for r in rows if r.path == "b" and r.rps}
    raw_rps = {r.model: r.rps for r in rows if r.path == "a" and r.rps}
    for r in rows:
        if r.rps is None:
            continue
        if r.path in ("c", "d") and naive_rps.get((r.model, r.concurrency)):
            r.vs_naive = r.rps / naive_rps[(r.model, r.concurrency)]
        if r.path != "a" and raw_rps.get(r.model):
            r.vs_raw = r.rps / raw_rps[r.model]


def _find(rows: list[Row], model: str, path: str, fmt: str | None, conc: int | None) -> Row | None:
    for r in rows:
        if r.model == model and r.path == path and (fmt is None or r.fmt == fmt) and r.concurrency == conc:
            return r if r.rps else None
    return None


@dataclass
class Target:
    name: str
    verdict: str  # met, missed, not measured
    detail: str


def _noise(*rows: Row | None) -> str:
    bad = [r for r in rows if r is not None and disturbed(r)]
    if not bad:
        return ""
    worst = max(r.other_cpu or 0.0 for r in bad)
    return f" (⚠ measured while other processes used up to {worst:.2f} core)"


def targets(rows: list[Row]) -> list[Target]:
    out: list[Target] = []
    # 1. tiny model: (d) at 64 >= 2x (b)
    d, b = _find(rows, "digits_int8", "d", "json", 64), _find(rows, "digits_int8", "b", None, 64)
    if d and b and d.rps and b.rps:
        ratio = d.rps / b.rps
        bin_d = _find(rows, "digits_int8", "d", "bin", 64)
        extra = f"; with binary tensors {bin_d.rps / b.rps:.2f}x" if bin_d and bin_d.rps else ""
        out.append(
            Target(
                f"digits_int8, c=64: (d) >= {TARGET_TINY_VS_NAIVE}x (b) req/s",
                "met" if ratio >= TARGET_TINY_VS_NAIVE else "MISSED",
                f"(d) JSON {d.rps:,.0f} req/s vs (b) {b.rps:,.0f} req/s = {ratio:.2f}x{extra}{_noise(d, b)}",
            )
        )
    else:
        out.append(Target(f"digits_int8, c=64: (d) >= {TARGET_TINY_VS_NAIVE}x (b)", "not measured", ""))
    # 2. heavy model: (d) at 64 >= 90% of (a) with binary tensors, >= 85% with JSON
    ha = _find(rows, heavy_model.NAME, "a", None, None)
    for fmt, label, goal in (
        ("bin", "binary", TARGET_HEAVY_VS_RAW),
        ("json", "JSON", TARGET_HEAVY_JSON_VS_RAW),
    ):
        hd = _find(rows, heavy_model.NAME, "d", fmt, 64)
        name = f"{heavy_model.NAME}, c=64: (d) {label} >= {goal:.0%} of (a)"
        if hd and ha and hd.rps and ha.rps:
            ratio = hd.rps / ha.rps
            detail = (
                f"(d) {label} {hd.rps:,.0f} req/s vs (a) {ha.rps:,.0f} rows/s "
                f"(batch {ha.mean_batch:.0f}) = {ratio:.0%}{_noise(hd, ha)}"
            )
            out.append(Target(name, "met" if ratio >= goal else "MISSED", detail))
        else:
            out.append(Target(name, "not measured", ""))
    # 3. idle batcher: c=1 p50 of (d) <= 0.8x (b), every model, same JSON body
    parts, verdicts = [], []
    for model in dict.fromkeys(r.model for r in rows):
        d1, b1 = _find(rows, model, "d", "json", 1), _find(rows, model, "b", None, 1)
        if d1 and b1 and d1.p50_ms and b1.p50_ms:
            ratio = d1.p50_ms / b1.p50_ms
            verdicts.append(ratio <= TARGET_IDLE_P50)
            bin1 = _find(rows, model, "d", "bin", 1)
            extra = f", binary {bin1.p50_ms:.3f} ms" if bin1 and bin1.p50_ms else ""
            parts.append(
                f"{model} {d1.p50_ms:.3f} vs {b1.p50_ms:.3f} ms = {ratio:.2f}x{extra}{_noise(d1, b1)}"
            )
    name = f"c=1: (d) p50 <= {TARGET_IDLE_P50}x (b) p50 (JSON, every model)"
    if verdicts:
        out.append(Target(name, "met" if all(verdicts) else "MISSED", "; ".join(parts)))
    else:
        out.append(Target(name, "not measured", ""))
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def disturbed(r: Row) -> bool:
    return r.other_cpu is not None and r.other_cpu > DISTURBED


def table(rows: list[Row]) -> str:
    head = (
        "| model | path | body | conc | req/s | p50 ms | p99 ms | mean batch | wrong/checked"
        " | vs (b) | vs (a) | server CPU | loadgen CPU | other CPU |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        path = PATH_LABEL[r.path]
        if r.path == "a" and r.mean_batch:
            path += f", batch {r.mean_batch:.0f}"
        if r.failure:
            lines.append(
                f"| {r.model} | {path} | {FORMAT_LABEL[r.fmt]} | {r.concurrency} | FAILED |" + " |" * 9
            )
            continue
        wrong = f"{r.wrong}/{r.checked}" + (f" ({r.errors} errors)" if r.errors else "")
        batch = "–" if r.mean_batch is None else f"{r.mean_batch:.1f}"
        cells = [
            r.model,
            path,
            FORMAT_LABEL[r.fmt],
            "–" if r.concurrency is None else str(r.concurrency),
            _fmt(r.rps, ",.0f") + (" ⚠" if disturbed(r) else ""),
            _fmt(r.p50_ms, ".3f"),
            _fmt(r.p99_ms, ".3f"),
            batch,
            wrong,
            "–" if r.vs_naive is None else f"{r.vs_naive:.2f}x",
            "–" if r.vs_raw is None else f"{r.vs_raw:.0%}",
            _fmt(r.server_cpu, ".2f"),
            _fmt(r.client_cpu, ".2f"),
            _fmt(r.other_cpu, ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def revision() -> str:
    """The commit measured, "+ local changes" when edge_agent/ differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "edge_agent"], cwd=ROOT, check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + local changes in edge_agent/" if dirty.returncode else "")


def machine(cores: tuple[int | None, int | None], n_cpu: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("onnxruntime", "ai-edge-litert", "fastapi", "uvicorn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "revision": revision(),
        "cpu": cpu,
        "cpus_usable": n_cpu,
        "server_core": cores[0],
        "loadgen_core": cores[1],
        "python": platform.python_version(),
        "packages": versions,
    }


def prioritise(nice: int) -> None:
    """Give this process, and every process it starts, scheduling priority ``nice``.

    With autogroup scheduling (the Linux default) nice only ranks processes of one session
    against each other, while sessions share the CPUs equally; so the benchmark moves into a
    session of its own (re-running itself under ``setsid --wait`` when it leads a process group,
    as under a shell) and sets that session's autogroup priority too. The caller's session is
    left as it was."""
    setsid = shutil.which("setsid")
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:  # a process-group leader cannot: run again in a new session
            if setsid is None:
                raise OSError("setsid(1) is needed to leave the process group") from None
            sys.stdout.flush()
            os.execv(setsid, [setsid, "--wait", sys.executable, *sys.orig_argv[1:]])
    with contextlib.suppress(OSError):
        if setsid and Path(setsid).samefile(f"/proc/{os.getppid()}/exe"):
            # under `setsid --wait`: an interrupted parent (Ctrl-C) must still stop this run cleanly
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Serving benchmark: raw runtime vs naive FastAPI vs the gateway (batching off/on)."
    )
    p.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated levels (default: %(default)s)")
    p.add_argument("--paths", default="a,b,c,d", help="which of a,b,c,d to run (default: all)")
    p.add_argument(
        "--formats",
        help=f"gateway bodies among {','.join(GATEWAY_FORMATS)} (png: image models only; "
        "default: json,bin,png; quick: json,bin)",
    )
    p.add_argument("--quick", action="store_true", help="short windows (smoke test): about a minute")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 4, quick 0.3)")
    p.add_argument("--warmup", type=float, help="discarded seconds per cell (default 1, quick 0.1)")
    p.add_argument(
        "--requests", type=int, help="fixed number of measured requests per cell instead of a duration"
    )
    p.add_argument(
        "--max-wait",
        type=float,
        help="before each measurement wait up to this many seconds for other processes to go quiet "
        "(default 20, quick 0)",
    )
    p.add_argument(
        "--max-wait-total",
        type=float,
        default=120.0,
        help="at most this many seconds of such waiting in the whole run (default %(default)s)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the benchmark and every process it starts (e.g. -10 on a shared "
        "machine, as root; default %(default)s: unchanged)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.paths = [x for x in args.paths.split(",") if x]
    args.formats = [
        f for f in (args.formats or ("json,bin" if args.quick else "json,bin,png")).split(",") if f
    ]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    known = set(DEFAULT_MODELS) | {d.name for d in MODELS.iterdir() if (d / "1").is_dir()}
    bad = [m for m in args.models if m not in known]
    if bad:
        p.error(f"unknown model(s) {bad}; known: {sorted(known)}")
    if not set(args.paths) <= set(PATH_LABEL):
        p.error("--paths takes a subset of a,b,c,d")
    if not set(args.formats) <= set(GATEWAY_FORMATS):
        p.error(f"--formats takes a subset of {','.join(GATEWAY_FORMATS)}")
    if not args.concurrency or min(args.concurrency) < 1 or (args.requests is not None and args.requests < 1):
        p.error("concurrency levels and --requests must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        try:
            prioritise(args.nice)  # may run this script again in a session of its own
        except OSError as exc:
            print(f"--nice {args.nice}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    base = QUICK if args.quick else FULL
    if args.max_wait is None:
        args.max_wait = 0.0 if args.quick else 20.0
    budget = Budget(
        warmup_s=base.warmup_s if args.warmup is None else args.warmup,
        duration_s=base.duration_s if args.duration is None else args.duration,
        raw_s=base.raw_s,
        pause_s=base.pause_s,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    usable = sorted(os.sched_getaffinity(0))
    cores: tuple[int | None, int | None] = (usable[0], usable[1]) if len(usable) >= 2 else (None, None)
    command = shlex.join(
        [Path(sys.executable).name, "bench/serving.py", *(sys.argv[1:] if argv is None else argv)]
    )
    info = machine(cores, len(usable))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(f"command: {command}")
    print(f"gateway revision: {info['revision']}")
    if cores[0] is None:
        print(
            f"machine: {info['cpu']}, {len(usable)} usable CPU: server and load generator SHARE it "
            "(no pinning)"
        )
    else:
        print(
            f"machine: {info['cpu']}, {len(usable)} usable CPUs; server pinned to core {cores[0]}, "
            f"load generator to core {cores[1]}; runtimes use 1 intra-op thread"
        )
    per_cell = (
        f"{args.requests} measured requests after max(10, 2 x concurrency) warm-up requests"
        if args.requests
        else f"{budget.warmup_s:g} s warm-up + {budget.duration_s:g} s measured"
    )
    print(f"budget per HTTP cell: {per_cell}; (a): {budget.raw_s:g} s per batch size")
    if args.nice:
        print(f"priority: nice {args.nice} for the benchmark, its servers and load generators (own session)")
    if cores[1] is not None:
        os.sched_setaffinity(0, {cores[1]})  # this process waits on the client core
    rows: list[Row] = []
    t_start = time.monotonic()
    gate = QuietGate(args.max_wait, args.max_wait_total, log)
    tmp = Path(tempfile.mkdtemp(prefix="edge-serving-bench-"))
    try:
        for name in args.models:
            t0 = time.monotonic()
            case = prepare_case(name, tmp)
            log(f"{name}: {len(case.inputs)} distinct inputs, references from the raw runtime")
            rows.extend(bench_model(case, args, budget, cores, tmp, log, gate))
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    add_ratios(rows)
    verdicts = targets(rows)
    print()
    print(table(rows))
    print()
    print(
        "req/s: answers per second in the measured window ((a): rows per second of back-to-back runtime "
        "calls); p50/p99: per request ((a): per runtime call). mean batch: rows per runtime call, from "
        "the gateway's /metrics. vs (b): req/s over (b)'s at the same concurrency; vs (a): over (a)'s "
        "rows/s. CPU: cores busy in the server / load-generator / any other process during the window; "
        f"⚠: other processes used over {DISTURBED} core, so that row's figures are disturbed."
    )
    print()
    print("Targets:")
    for t in verdicts:
        print(f"- {t.name}: {t.verdict}" + (f" — {t.detail}" if t.detail else ""))
    wrong = sum(r.wrong for r in rows)
    failed = [r for r in rows if r.failure]
    print()
    print(f"wrong answers: {wrong} of {sum(r.checked for r in rows)} checked; failed cells: {len(failed)}")
    cached = [r for r in rows if r.cache_hits]
    if cached:
        print(f"WARNING: the gateway's prediction cache answered in {len(cached)} cells: not inference")
    for r in rows:
        for ex in r.wrong_examples:
            print(f"  {r.model} {PATH_LABEL[r.path]} {FORMAT_LABEL[r.fmt]} c={r.concurrency}: {ex}")
    print(f"total time: {time.monotonic() - t_start:.0f} s")
    if args.json:
        doc = {
            "command": command,
            "machine": info,
            "budget": asdict(budget) | {"requests_per_cell": args.requests, "nice": args.nice},
            "rows": [asdict(r) for r in rows],
            "targets": [asdict(t) for t in verdicts],
            "wrong_answers": wrong,
            "failed_cells": len(failed),
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
