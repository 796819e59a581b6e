"""Load generator of the serving benchmark: a separate process, real HTTP over loopback.

``python bench/loadgen.py SPEC.pkl OUT.json`` runs every cell (one concurrency level each)
the spec file lists against one server and writes one result per cell.

A cell opens N keep-alive connections, one per worker; each worker sends a request, waits
for the whole answer and sends the next (closed loop), cycling through the spec's
pre-built requests (worker i starts at request i). The client is an asyncio protocol on
uvloop with httptools' C parser and pre-serialised request bytes, a few tens of
microseconds of CPU per request, so one core of it outruns one core of server. It can
run for a fixed time (``warmup_s`` discarded, then ``duration_s`` measured: throughput is
the answers completed inside the window over its length, latencies are theirs) or for a
fixed number of requests after a warm-up (``requests``). A slow cell's window is extended
until it holds 20 answers (30 s at most), so throughput is never counted from a handful.

Every answer, warm-up included, is checked against the raw runtime's answer for its
input once the cell is over (so checking costs no client time while it is timed): status
200 and outputs within the stated tolerance. The spec names the check:

* ``naive``: ``{"prediction": [output, ...]}``, raw outputs;
* ``v1``: the gateway's v1 answer: ``results[0].probabilities`` (classification: within
  ``prob_atol``, which is half the logit tolerance since softmax is 1/2-Lipschitz in the
  max norm, and the same top class unless the reference's top two are within 2x that) or
  ``results[0].boxes`` (detection: same number of boxes, each with IoU >= 0.9 and score
  within 0.01 of the reference box decoded from the raw runtime's outputs);
* ``v2``: an Open Inference Protocol v2 answer, JSON or binary tensor extension: raw output
  tensors within ``atol`` / ``rtol`` (classification also top class as above).

With ``metrics_path`` it scrapes the gateway's Prometheus text at both ends of the window:
mean batch size = delta of ``edge_batch_size_sum`` / delta of ``edge_batch_size_count``,
and mean per-stage seconds from ``edge_stage_seconds``. With ``server_pid`` it reads the
server's CPU time from /proc, and it reports its own, to show which side was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import numpy as np
import orjson

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
MAX_WRONG_EXAMPLES = 3
MIN_CPU_WINDOW_S = 0.5
MIN_WINDOW_ANSWERS = 20  # a measured window lasts until it holds this many answers...
MAX_WINDOW_EXTENSION_S = 30.0  # ...at most this much longer than asked
IOU_MIN = 0.9
SCORE_ATOL = 0.01


# -- HTTP/1.1 client -------------------------------------------------------------------------
class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._ihcl: int | None = None
        self._waiter: asyncio.Future[tuple[int, bytes, int | None]] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection closed by the server ({exc})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self._ihcl = int(value)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        result = (self._parser.get_status_code(), b"".join(self._body), self._ihcl)
        self._body, self._ihcl = [], None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bytes, int | None]:
        """Send pre-serialised request bytes; (status, body, Inference-Header-Content-Length)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(Connection, host, port), CONNECT_TIMEOUT_S)
    return proto


def build_request(
    method: str, host: str, port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method != "GET" or body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- answer checks --------------------------------------------------------------------------------
def close_enough(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> str | None:
    if got.shape != want.shape:
        return f"shape {list(got.shape)} != {list(want.shape)}"
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        return f"differs by up to {diff:.4g} (atol {atol:g}, rtol {rtol:g})"
    return None


def top_class(got: np.ndarray, want: np.ndarray, tol: float) -> str | None:
    g, w = got.reshape(-1), want.reshape(-1)
    gi, wi = int(np.argmax(g)), int(np.argmax(w))
    if gi != wi and w[wi] - w[gi] > 2 * tol:
        return f"top class {gi}, reference {wi}"
    return None


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _check_boxes(got: list[dict[str, Any]], want: list[list[float]]) -> str | None:
    """``want``: [score, xmin, ymin, xmax, ymax] rows."""
    if len(got) != len(want):
        return f"{len(got)} boxes, reference {len(want)}"
    unmatched = [[b["score"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in got]
    for ref in want:
        best = max(range(len(unmatched)), key=lambda i: _iou(unmatched[i][1:], ref[1:]))
        cand = unmatched.pop(best)
        iou = _iou(cand[1:], ref[1:])
        if iou < IOU_MIN or abs(cand[0] - ref[0]) > SCORE_ATOL:
            return f"box {cand} vs reference {[round(v, 2) for v in ref]} (IoU {iou:.3f})"
    return None


V2_DTYPES = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "INT8": "i1"}


def _v2_outputs(body: bytes, ihcl: int | None) -> dict[str, np.ndarray]:
    header = body if ihcl is None else body[:ihcl]
    blob = memoryview(body)[len(header) :]
    doc = orjson.loads(header)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for entry in doc["outputs"]:
        dtype = np.dtype(V2_DTYPES[entry["datatype"]])
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(blob[offset : offset + size], dtype=dtype)
            offset += size
        else:
            arr = np.asarray(entry["data"], dtype=dtype)
        out[entry["name"]] = arr.reshape(entry["shape"])
    return out


def check_answer(kind: str, status: int, body: bytes, ihcl: int | None, exp: dict[str, Any]) -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    tol = float(exp["atol"])
    if kind == "naive":
        pred = orjson.loads(body)["prediction"]
        for j, (name, want) in enumerate(exp["raw"].items()):
            got = np.asarray(pred[j], dtype=np.float32)
            problem = close_enough(got, want, tol, exp["rtol"])
            if problem is None and exp.get("classification"):
                problem = top_class(got, want, tol)
            if problem:
                return f"output {name}: {problem}"
        return None
    if kind == "v2":
        outs = _v2_outputs(body, ihcl)
        for name, want in exp["raw"].items():
            if name not in outs:
                return f"output {name} missing"
            problem = close_enough(outs[name], want, tol, exp["rtol"])
            if problem is None and exp.get("classification"):
                problem = top_class(outs[name], want, tol)
            if problem:
                return f"output {name}: {problem}"
        return None
    if kind == "v1":
        row = orjson.loads(body)["results"][0]
        if exp.get("probs") is not None:
            want = exp["probs"]
            got = np.asarray(row["probabilities"], dtype=np.float32)
            problem = close_enough(got, want, exp["prob_atol"], 0.0) or top_class(got, want, exp["prob_atol"])
            if problem is None and row["index"] != int(np.argmax(got)):
                problem = f"index {row['index']} is not the top probability"
            return problem
        return _check_boxes(row["boxes"], exp["boxes"])
    raise ValueError(f"unknown check kind {kind!r}")


# -- one cell ----------------------------------------------------------------------------------------
@dataclass
class CellResult:
    concurrency: int
    requests: int = 0  # answers counted in the measured window
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    checked: int = 0  # every answer of the cell, warm-up included
    wrong: int = 0
    errors: int = 0  # non-200 answers and transport failures (also counted as wrong)
    wrong_examples: list[str] = field(default_factory=list)
    mean_batch: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    server_cpu: float | None = None  # cores busy in the server process during the window
    client_cpu: float | None = None  # cores busy in this process during the window
    other_cpu: float | None = None  # cores busy in every other process during the window (noise)
    cache_hits: float | None = None  # answers the gateway's prediction cache gave in the window


_SAMPLE = re.compile(r"^(edge_batch_size|edge_stage_seconds)_(sum|count)\{([^}]*)\} ([0-9.eE+-]+)$")
_CACHE_HITS = re.compile(r"^edge_cache_events_total\{([^}]*)\} ([0-9.eE+-]+)$")


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """{"batch_sum", "batch_count", "stage.<name>.sum", "stage.<name>.count", "cache_hits"} of
    one model (cache hits: of the prediction cache, which has no model label)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        hits = _CACHE_HITS.match(line)
        if hits and 'cache="prediction"' in hits.group(1) and 'event="hit"' in hits.group(1):
            out["cache_hits"] = float(hits.group(2))
            continue
        m = _SAMPLE.match(line)
        if not m or f'model="{model}"' not in m.group(3):
            continue
        if m.group(1) == "edge_batch_size":
            out[f"batch_{m.group(2)}"] = float(m.group(4))
        else:
            stage = re.search(r'stage="([^"]+)"', m.group(3))
            if stage:
                out[f"stage.{stage.group(1)}.{m.group(2)}"] = float(m.group(4))
    return out


async def scrape(host: str, port: int, path: str, model: str) -> dict[str, float]:
    conn = await connect(host, port)
    try:
        status, body, _ = await asyncio.wait_for(
            conn.request(build_request("GET", host, port, path)), REQUEST_TIMEOUT_S
        )
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}")
    return parse_metrics(body.decode(), model)


def cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) clock ticks since boot, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
                total = sum(ticks)
                out[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    return out


def busy_cores(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Cores busy between two ``cpu_jiffies`` readings (all CPUs together)."""
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


def _server_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


Record = tuple[float, float, int, int, bytes, int | None]  # start, end, request index, status, body, ihcl


def _answered_in(records: list[Record], t0: float) -> int:
    return sum(1 for r in records if r[1] >= t0)


async def run_cell(spec: dict[str, Any], concurrency: int) -> CellResult:
    host, port = spec["host"], spec["port"]
    reqs: list[bytes] = spec["requests"]
    n_req = len(reqs)
    count_mode = spec.get("requests_per_cell") is not None
    measured = int(spec.get("requests_per_cell") or 0)
    warm = min(max(2 * concurrency, 10), max(measured, 10)) if count_mode else 0
    total = warm + measured
    records: list[Record] = []
    failures: list[str] = []
    state = {"stop": False, "ticket": 0, "t_first": 0.0}

    conns = [await connect(host, port) for _ in range(concurrency)]

    async def worker(wid: int, conn: Connection) -> None:
        i = wid
        while not state["stop"]:
            if count_mode:
                ticket = state["ticket"]
                if ticket >= total:
                    return
                state["ticket"] = ticket + 1
                if ticket == warm:
                    state["t_first"] = time.perf_counter()
                i = ticket
            idx = i % n_req
            i += 1
            t0 = time.perf_counter()
            try:
                status, body, ihcl = await asyncio.wait_for(conn.request(reqs[idx]), REQUEST_TIMEOUT_S)
            except (ConnectionError, OSError, TimeoutError) as exc:
                failures.append(f"request {idx}: {type(exc).__name__}: {exc}")
                return
            records.append((t0, time.perf_counter(), idx, status, body, ihcl))

    metrics_path = spec.get("metrics_path")
    model = spec.get("model", "")
    pid = spec.get("server_pid")
    res = CellResult(concurrency)
    m0: dict[str, float] = {}
    if metrics_path and count_mode:
        m0 = await scrape(host, port, metrics_path, model)
    tasks = [asyncio.ensure_future(worker(w, c)) for w, c in enumerate(conns)]
    try:
        if count_mode:
            cpu0, srv0, jif0 = time.process_time(), _server_cpu_s(pid), cpu_jiffies()
            await asyncio.gather(*tasks)
            t_w0 = state["t_first"] or time.perf_counter()
            t_w1 = max((r[1] for r in records), default=t_w0)
            window = records[warm:]  # in completion order: the first `warm` answers are the warm-up
        else:
            await asyncio.sleep(float(spec["warmup_s"]))
            if metrics_path:
                m0 = await scrape(host, port, metrics_path, model)
            cpu0, srv0, jif0 = time.process_time(), _server_cpu_s(pid), cpu_jiffies()
            t_w0 = time.perf_counter()
            await asyncio.sleep(float(spec["duration_s"]))
            # a slow cell (large bodies, high concurrency) gets a longer window: enough answers to count
            want = MIN_WINDOW_ANSWERS
            seen, answered = len(records), _answered_in(records, t_w0)
            extend_until = time.perf_counter() + MAX_WINDOW_EXTENSION_S
            while answered + len(records) - seen < want and len(failures) < concurrency:
                if time.perf_counter() > extend_until:
                    break
                await asyncio.sleep(0.05)
            t_w1 = time.perf_counter()
        cpu1, srv1, jif1 = time.process_time(), _server_cpu_s(pid), cpu_jiffies()
        if metrics_path:
            m1 = await scrape(host, port, metrics_path, model)
    finally:
        state["stop"] = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in conns:
            c.close()
    if not count_mode:
        window = [r for r in records if t_w0 <= r[1] < t_w1]
    span = max(t_w1 - t_w0, 1e-9)
    res.seconds = round(span, 3)
    res.requests = len(window)
    res.rps = len(window) / span
    if window:
        lat = np.array([r[1] - r[0] for r in window]) * 1000.0
        res.p50_ms = float(np.percentile(lat, 50))
        res.p99_ms = float(np.percentile(lat, 99))
        res.mean_ms = float(lat.mean())
    if span >= MIN_CPU_WINDOW_S:  # clock ticks are 10 ms: too coarse for a shorter window
        res.client_cpu = round((cpu1 - cpu0) / span, 3)
        if srv0 is not None and srv1 is not None:
            res.server_cpu = round((srv1 - srv0) / span, 3)
        if jif0 and jif1:
            others = busy_cores(jif0, jif1) - res.client_cpu - (res.server_cpu or 0.0)
            res.other_cpu = round(max(0.0, others), 3)
    if metrics_path:
        res.cache_hits = m1.get("cache_hits", 0.0) - m0.get("cache_hits", 0.0)
        d_count = m1.get("batch_count", 0.0) - m0.get("batch_count", 0.0)
        if d_count > 0:
            res.mean_batch = (m1.get("batch_sum", 0.0) - m0.get("batch_sum", 0.0)) / d_count
        for key, value in m1.items():
            if key.startswith("stage.") and key.endswith(".sum"):
                stage = key.split(".")[1]
                n = m1.get(f"stage.{stage}.count", 0.0) - m0.get(f"stage.{stage}.count", 0.0)
                if n > 0:
                    res.stage_ms[stage] = round((value - m0.get(key, 0.0)) / n * 1000.0, 4)
    # check every answer
    kind, expected = spec["check"], spec["expected"]
    for _, _, idx, status, body, ihcl in records:
        res.checked += 1
        try:
            problem = check_answer(kind, status, body, ihcl, expected[idx])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            problem = f"unreadable answer ({type(exc).__name__}: {exc}): {body[:200]!r}"
        if problem is not None:
            res.wrong += 1
            res.errors += status != 200
            if len(res.wrong_examples) < MAX_WRONG_EXAMPLES:
                res.wrong_examples.append(f"request {idx}: {problem}")
    res.wrong += len(failures)
    res.errors += len(failures)
    res.wrong_examples += failures[: max(0, MAX_WRONG_EXAMPLES - len(res.wrong_examples))]
    return res


async def run_all(spec: dict[str, Any]) -> list[CellResult]:
    results = []
    for c in spec["concurrency"]:
        results.append(await run_cell(spec, int(c)))
        await asyncio.sleep(float(spec.get("pause_s", 0.2)))  # let the server settle between cells
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: loadgen.py SPEC.pkl OUT.json", file=sys.stderr)
        return 2
    with open(args[0], "rb") as fh:
        spec: dict[str, Any] = pickle.load(fh)  # written by bench/serving.py for this run only
    if spec.get("core") is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(spec["core"])})
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    results = runner(run_all(spec))
    Path(args[1]).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
