"""Patterns benchmark: what each serving pattern costs and buys, measured in one run, one table.

Real role processes (``edge-agent serve``, ``worker`` x2, ``batch --now``, ``model@NAME`` x3,
``camera``, ``up``) on free loopback ports, real HTTP, tmp copies of the bundled models and a
tmp data directory; everything started here is stopped at the end, also on failure.

* prediction cache: face on ``tests/data/cat.jpg``, a miss (the image with a few random bytes
  appended after its JPEG end marker: a new cache key, the same decode) then a hit on the same
  bytes; server-side ``timings_ms.total`` and client-side HTTP latency (target: hit >= 10x faster);
  and a client that asks by digest first (``GET /v1/models/face/predictions/{sha256}``): a hit is
  that GET, a miss is its 404 plus the upload;
* data cache: cat.jpg registered with ``POST /data``, predicted by id with ``Cache-Control:
  no-cache`` (the prediction cache is skipped): ``timings_ms.preprocess`` of a miss (the item
  deleted and registered again) against a hit;
* async: submit latency (``POST /async/face`` -> 202), queued -> started with an idle worker,
  jobs/s drained by 1 and by 2 workers (jobs queued while the workers are SIGSTOPped, timed from
  SIGCONT to the last ``finished``), and an idle worker's CPU time over 30 s (``/proc``);
* batch: items/s of ``edge-agent batch --now`` and of ``BatchRunner.run_pending()`` on N iris
  rows, against a single-thread loop of ``Engine.predict`` per item (loop A) and a single-thread
  loop that also records each result in its own transaction (loop B);
* microservice: ``POST /microservice/iris`` (three model@NAME processes, in parallel) against
  the three models called in-process, one after another;
* camera: the role's frames/s, unthrottled (``EDGE_CAMERA__REALTIME=false``,
  ``EDGE_CAMERA__FPS=1000``, from its ``camera-status.json``), against the model alone in
  process on the same decoded frames;
* memory: VmRSS / VmHWM / PSS of every role of ``edge-agent up`` (8 roles) after a warm-up
  request through each, their sum with the supervisor's, against ``up --profile all-in-one``.

    .venv/bin/python bench/patterns.py                  # everything, 2-4 minutes
    .venv/bin/python bench/patterns.py --quick          # fewer samples, 3 s idle window, < 90 s
    .venv/bin/python bench/patterns.py --skip camera,memory --json out.json

Exit status: 0 when every section ran (targets met or not), 1 when a section failed, 2 on a
usage error. The machine is shared: compare the ratios within one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import os
import platform
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.engine import Engine, EngineOptions
from edge_agent.runtime.postprocess import postprocess
from edge_agent.runtime.preprocess import transform
from edge_agent.runtime.store import ModelStore
from edge_agent.storage import DB_NAME, Storage
from edge_agent.supervisor import read_status
from edge_agent.workers.batch import BatchRunner, RunnerOptions
from tests.conftest import DATA, ROOT, copy_models
from tests.patterns.test_async import WorkerProc, _worker, context_switches, cpu_ticks
from tests.patterns.test_camera import camera
from tests.patterns.test_prep_pred import RoleProc, Roles
from tests.patterns.videos import read_frames, write_face_video
from tests.serving.gateway_proc import Gateway, run_gateway

MODEL_NAMES = ["face", "iris", "iris_setosa", "iris_versicolor", "iris_virginica"]
OVR = ["iris_setosa", "iris_versicolor", "iris_virginica"]
UP_ROLES = ["serve", "worker", "batch", "prep", *(f"model@{n}" for n in OVR), "camera"]
SECTIONS = ("caches", "microservice", "async", "batch", "camera", "memory")
CAT = (DATA / "cat.jpg").read_bytes()
JPEG = {"content-type": "image/jpeg"}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
TARGET_HIT_SPEEDUP = 10.0
SUPERVISOR_SOURCE = ROOT / "edge_agent" / "supervisor.py"
SEED = 20240611


class BenchError(Exception):
    """A measurement could not be taken (a process failed, an answer was wrong)."""


@dataclass(frozen=True, slots=True)
class Budget:
    """How many samples each section takes."""

    cache_pairs: int  # prediction cache: miss/hit pairs
    data_rounds: int  # data cache: misses (delete + register + predict), each followed by hits
    data_hits: int  # hits after each miss
    micro_requests: int  # fan-out requests (and in-process triples)
    async_jobs: int  # jobs per drain
    drain_rounds: int  # rounds of (1 worker, 2 workers) drains
    wake_jobs: int  # queued -> started samples
    idle_s: float  # idle worker CPU window
    batch_items: int  # iris rows per batch run
    loop_record_max: int  # items of loop B (one fsync each)
    camera_frames: int  # frames the camera role infers
    video_frames: tuple[int, int]  # face frames, blank frames of the test video
    warmup: int  # requests before timing starts


FULL = Budget(60, 20, 5, 300, 150, 3, 12, 30.0, 2000, 1000, 600, (240, 60), 5)
QUICK = Budget(10, 3, 3, 40, 40, 1, 5, 3.0, 200, 200, 120, (60, 30), 2)


@dataclass(slots=True)
class Row:
    section: str
    what: str
    measured: str
    against: str = "-"
    ratio: str = "-"
    target: str = "-"


@dataclass(slots=True)
class Ctx:
    tmp: Path
    models: Path
    data: Path  # the gateway's data dir (shared by the worker and batch roles, as on a device)
    cfg: Budget
    quick: bool
    stack: ExitStack
    engine: Engine
    gw: Gateway | None = None
    roles: Roles | None = None
    services: dict[str, RoleProc] = field(default_factory=dict)
    video: Path | None = None
    errors: dict[str, str] = field(default_factory=dict)  # failures that leave the section's rows


# -- small helpers -------------------------------------------------------------------------------
class Http:
    """One keep-alive HTTP/1.1 connection (``http.client``): the least client overhead."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, float]:
        """(status, body, client-side milliseconds); a dropped keep-alive connection is retried once."""
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
                continue
            return resp.status, data, (time.perf_counter() - t0) * 1000.0
        raise AssertionError("unreachable")

    def json(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> tuple[dict[str, Any], float]:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        status, data, ms = self.request(method, path, body, headers)
        if status not in expect:
            raise BenchError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        doc: dict[str, Any] = json.loads(data) if data else {}
        return doc, ms

    def close(self) -> None:
        self.conn.close()


def p50(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def fms(v: float) -> str:
    return f"{v:.3f} ms" if v < 1 else (f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def fx(r: float) -> str:
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")} | extra


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def iris_rows(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    lo, hi = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    rows: list[list[float]] = np.round(rng.uniform(lo, hi, (n, 4)), 1).tolist()
    return rows


# -- /proc -----------------------------------------------------------------------------------------
def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and (when readable) Pss of one process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """Sums over a process and its descendants (gone ones skipped)."""
    total = {"VmRSS": 0, "VmHWM": 0, "Pss": 0, "processes": 0}
    for p in [pid, *descendants(pid)]:
        try:
            mem = proc_memory(p)
        except OSError:
            continue
        for key, value in mem.items():
            total[key] += value
        total["processes"] += 1
    return total


def busy_ticks() -> int:
    """CPU ticks spent busy by the whole machine (every core), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def own_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_ticks(pid)
    return total


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held until every one is chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the shared gateway -----------------------------------------------------------------------------
def start_gateway(ctx: Ctx, with_services: bool) -> None:
    """model@NAME x3 (for the microservice) and the gateway, started together."""
    env: dict[str, str] = {}
    if with_services:
        ctx.roles = Roles(ctx.models, ctx.data)
        ctx.stack.callback(ctx.roles.close)
        ctx.services = {n: ctx.roles.start("model", n) for n in OVR}
        env["EDGE_SERVICES__MODELS"] = json.dumps({n: s.url for n, s in ctx.services.items()})
    ctx.gw = ctx.stack.enter_context(run_gateway(ctx.models, ctx.data, env=env))
    if ctx.roles is not None:
        ctx.roles.wait(*ctx.services.values())


def gateway(ctx: Ctx) -> Gateway:
    if ctx.gw is None:
        raise BenchError("the gateway is not running")
    return ctx.gw


# -- prediction cache and data cache ----------------------------------------------------------------
def target_cell(r: float) -> str:
    return f">= {TARGET_HIT_SPEEDUP:.0f}x: {'met' if r >= TARGET_HIT_SPEEDUP else '**missed**'}"


def bench_caches(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, client = ctx.cfg, Http(gateway(ctx).url)
    try:
        path = "/v1/models/face/predict"
        srv: dict[str, list[float]] = {"miss": [], "hit": []}
        cli: dict[str, list[float]] = {"miss": [], "hit": []}
        lookup: list[float] = []
        dig: dict[str, list[float]] = {"miss": [], "hit": []}  # by digest: GET first, upload on 404
        for i in range(cfg.warmup + cfg.cache_pairs):
            body = CAT + os.urandom(8)  # after the JPEG end marker: a new key, the same decode
            by_digest = f"/v1/models/face/predictions/{hashlib.sha256(body).hexdigest()}"
            absent, ask_ms = client.json("GET", by_digest, expect=(404,))
            if absent.get("code") != "prediction_not_cached":
                raise BenchError(f"expected a 404 prediction_not_cached, got {absent}")
            miss, miss_ms = client.json("POST", path, body, JPEG)
            hit, hit_ms = client.json("POST", path, body, JPEG)
            known, known_ms = client.json("GET", by_digest)
            if (miss["cache"].get("prediction"), hit["cache"].get("prediction")) != ("miss", "hit"):
                raise BenchError(f"expected a miss then a hit, got {miss['cache']} then {hit['cache']}")
            if hit["results"] != miss["results"] or known["results"] != miss["results"]:
                raise BenchError("the cached answer differs from the computed one")
            if known["cache"].get("prediction") != "hit":
                raise BenchError(f"expected a hit by digest, got {known['cache']}")
            if i < cfg.warmup:
                continue
            dig["miss"].append(ask_ms + miss_ms)
            dig["hit"].append(known_ms)
            srv["miss"].append(miss["timings_ms"]["total"])
            srv["hit"].append(hit["timings_ms"]["total"])
            cli["miss"].append(miss_ms)
            cli["hit"].append(hit_ms)
            lookup.append(hit["timings_ms"]["cache_lookup"])

        floor = [client.request("GET", "/health")[2] for _ in range(cfg.cache_pairs + cfg.warmup)]
        floor = floor[cfg.warmup :]  # the HTTP round trip of a request that does nothing

        item = hashlib.sha256(CAT).hexdigest()
        client.request("DELETE", f"/data/{item}")  # 404 when not registered: fine
        pre: dict[str, list[float]] = {"miss": [], "hit": []}
        tot: dict[str, list[float]] = {"miss": [], "hit": []}
        no_cache = {"cache-control": "no-cache"}
        for i in range(cfg.data_rounds):
            if i:
                client.json("DELETE", f"/data/{item}")
            reg, _ = client.json("POST", "/data", CAT, JPEG, expect=(201,))
            if reg["id"] != item:
                raise BenchError(f"data item id {reg['id']} is not the sha256 of the bytes")
            for k in range(1 + cfg.data_hits):
                doc, ms = client.json("POST", f"/v1/models/face/predict/data/{item}", b"", no_cache)
                kind = "miss" if k == 0 else "hit"
                if doc["cache"].get("data") != kind or "prediction" in doc["cache"]:
                    raise BenchError(
                        f"expected data cache {kind} without the prediction cache: {doc['cache']}"
                    )
                pre[kind].append(doc["timings_ms"]["preprocess"])
                tot[kind].append(ms)
    finally:
        client.close()

    r_srv = ratio(p50(srv["miss"]), p50(srv["hit"]))
    r_cli = ratio(p50(cli["miss"]), p50(cli["hit"]))
    r_dig = ratio(p50(dig["miss"]), p50(dig["hit"]))
    r_pre = ratio(p50(pre["miss"]), p50(pre["hit"]))
    r_tot = ratio(p50(tot["miss"]), p50(tot["hit"]))
    n, m = len(srv["hit"]), len(pre["miss"])
    rows = [
        Row(
            "prediction cache",
            f"face, cat.jpg {len(CAT) // 1000} kB: server `timings_ms.total` (p50 of {n} pairs)",
            f"hit {fms(p50(srv['hit']))}",
            f"miss {fms(p50(srv['miss']))}",
            fx(r_srv),
            target_cell(r_srv),
        ),
        Row(
            "prediction cache",
            f"face, cat.jpg: client HTTP latency, keep-alive (p50 of {n} pairs)",
            f"hit {fms(p50(cli['hit']))} (bare GET /health {fms(p50(floor))})",
            f"miss {fms(p50(cli['miss']))}",
            fx(r_cli),
            target_cell(r_cli),
        ),
        Row(
            "prediction cache",
            f"face, cat.jpg by digest: client `GET /v1/models/face/predictions/{{sha256}}` (p50 of {n}); "
            "a miss is that 404 + the upload",
            f"hit {fms(p50(dig['hit']))}",
            f"miss {fms(p50(dig['miss']))}",
            fx(r_dig),
            target_cell(r_dig),
        ),
        Row(
            "data cache",
            f"cat.jpg for face by id, no-cache: `timings_ms.preprocess` ({m} misses, {len(pre['hit'])} hits)",
            f"hit {fms(p50(pre['hit']))}",
            f"miss {fms(p50(pre['miss']))}",
            fx(r_pre),
        ),
        Row(
            "data cache",
            "same requests: client HTTP latency",
            f"hit {fms(p50(tot['hit']))}",
            f"miss {fms(p50(tot['miss']))}",
            fx(r_tot),
        ),
    ]
    data = {
        "prediction": {
            "server_ms": srv,
            "client_ms": cli,
            "hit_cache_lookup_ms": lookup,
            "client_by_digest_ms": dig,
            "get_health_ms": floor,
        },
        "data": {"preprocess_ms": pre, "client_ms": tot},
        "ratios": {
            "server": r_srv,
            "client": r_cli,
            "client_by_digest": r_dig,
            "data_preprocess": r_pre,
            "data_client": r_tot,
        },
    }
    return rows, data


# -- microservice ---------------------------------------------------------------------------------
def bench_microservice(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, client = ctx.cfg, Http(gateway(ctx).url)
    x = {"float_input": np.asarray([IRIS_ROW], np.float32)}
    body = json.dumps({"data": [IRIS_ROW]}).encode()
    headers = {"content-type": "application/json"}
    fan_cli, fan_srv, local = [], [], []
    try:
        for i in range(cfg.warmup + cfg.micro_requests):  # HTTP and in-process alternate: same noise
            doc, ms = client.json("POST", "/microservice/iris", body, headers)
            if doc["unavailable"]:
                raise BenchError(f"services unavailable: {doc['services']}")
            t0 = time.perf_counter()
            scores = {n: ctx.engine.predict(n, x).results[0]["probabilities"][0] for n in OVR}
            local_ms = (time.perf_counter() - t0) * 1000.0
            if i < cfg.warmup:
                got = sorted(doc["results"][0]["scores"].values())
                if not np.allclose(got, sorted(scores.values()), atol=1e-5):
                    raise BenchError(f"fan-out scores {got} differ from in-process {scores}")
                continue
            fan_cli.append(ms)
            fan_srv.append(doc["timings_ms"]["total"])
            local.append(local_ms)
    finally:
        client.close()
    r = ratio(p50(fan_cli), p50(local))
    rows = [
        Row(
            "microservice",
            f"POST /microservice/iris, 1 row, 3 model@NAME in parallel (p50 of {len(fan_cli)})",
            f"{fms(p50(fan_cli))} (server {fms(p50(fan_srv))})",
            f"in-process 3x `Engine.predict` {fms(p50(local))}",
            fx(r),
        )
    ]
    return rows, {"fanout_client_ms": fan_cli, "fanout_server_ms": fan_srv, "in_process_ms": local}


# -- async ------------------------------------------------------------------------------------------
def _jobs_state(db: Path, ids: Sequence[str]) -> tuple[int, int, float | None]:
    """(finished, failed, latest finished time) of these jobs, read from the database."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        done = failed = 0
        last: float | None = None
        for k in range(0, len(ids), 500):
            chunk = list(ids[k : k + 500])
            marks = ",".join("?" * len(chunk))
            for status, count, latest in conn.execute(
                f"SELECT status, COUNT(*), MAX(finished) FROM jobs WHERE id IN ({marks}) "
                "AND status IN ('done', 'failed') GROUP BY status",
                chunk,
            ):
                done += int(count)
                failed += int(count) if status == "failed" else 0
                last = latest if last is None else max(last, latest)
        return done, failed, last
    finally:
        conn.close()


def _by_worker(db: Path, ids: Sequence[str]) -> dict[str, int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT lease_owner FROM jobs WHERE id IN ({marks})", list(ids)).fetchall()
    finally:
        conn.close()
    out: dict[str, int] = {}
    for (owner,) in rows:
        name = str(owner).rsplit("#", 1)[0]
        out[name] = out.get(name, 0) + 1
    return out


def bench_async(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, gw = ctx.cfg, gateway(ctx)
    db = ctx.data / DB_NAME
    client = Http(gw.url)
    workers: list[WorkerProc] = []
    others: list[float] = []  # cores busy with other processes' work during each drain

    def submit() -> tuple[str, float]:
        doc, ms = client.json("POST", "/async/face", CAT, JPEG, expect=(202,))
        return str(doc["job_id"]), ms

    def wait_jobs(ids: Sequence[str], timeout: float = 120.0) -> float:
        def finished() -> float | None:
            done, failed, last = _jobs_state(db, ids)
            if failed:
                raise BenchError(f"{failed} job(s) failed; see the worker logs in {ctx.data}")
            return last if done == len(ids) else None

        return float(wait_for(finished, timeout, f"{len(ids)} job(s)", step=0.01))

    def drain(active: Sequence[WorkerProc]) -> tuple[float, list[float], dict[str, int]]:
        """Queue the jobs while every worker is stopped, then let ``active`` drain them."""
        for w in workers:
            os.kill(w.proc.pid, signal.SIGSTOP)
        ids, submit_ms = [], []
        for _ in range(cfg.async_jobs):
            jid, ms = submit()
            ids.append(jid)
            submit_ms.append(ms)
        ours = [os.getpid(), gw.proc.pid, *(w.proc.pid for w in workers)]
        busy0, own0, m0 = busy_ticks(), own_ticks(ours), time.monotonic()
        t0 = time.time()
        for w in active:
            os.kill(w.proc.pid, signal.SIGCONT)
        last = wait_jobs(ids)
        busy1, own1, m1 = busy_ticks(), own_ticks(ours), time.monotonic()
        others.append(max(0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (m1 - m0))
        for w in workers:
            os.kill(w.proc.pid, signal.SIGCONT)  # the others wake, find nothing and sleep again
        return len(ids) / (last - t0), submit_ms, _by_worker(db, ids)

    with ExitStack() as procs:  # the workers stop at the end of this section
        try:
            w1 = procs.enter_context(_worker(ctx.models, ctx.data, "bench-1", {}))
            workers.append(w1)
            wait_jobs([submit()[0]])  # face loaded by the worker; the queue is empty
            time.sleep(0.3)
            pid = w1.proc.pid
            ticks0, switches0, t0 = cpu_ticks(pid), context_switches(pid), time.monotonic()
            time.sleep(cfg.idle_s)
            idle_ticks, idle_switches = cpu_ticks(pid) - ticks0, context_switches(pid) - switches0
            idle_s = time.monotonic() - t0
            idle_cpu_ms = idle_ticks * 1000.0 / os.sysconf("SC_CLK_TCK")

            wake = []
            for _ in range(cfg.wake_jobs):
                jid, _ms = submit()
                wait_jobs([jid])
                doc, _ = client.json("GET", f"/jobs/{jid}")
                wake.append((doc["started"] - doc["created"]) * 1000.0)
                time.sleep(0.05)  # the worker goes back to sleep in select()

            os.kill(w1.proc.pid, signal.SIGSTOP)  # the second worker warms up alone
            try:
                w2 = procs.enter_context(_worker(ctx.models, ctx.data, "bench-2", {}))
                workers.append(w2)
                wait_jobs([submit()[0]])
            finally:
                os.kill(w1.proc.pid, signal.SIGCONT)
            rates: dict[str, list[float]] = {"1": [], "2": []}
            submits: list[float] = []
            splits: list[dict[str, int]] = []
            for _ in range(cfg.drain_rounds):  # 1 and 2 workers alternate: the machine's noise on both
                for key, active in (("1", [w1]), ("2", [w1, w2])):
                    rate, submit_ms, split = drain(active)
                    rates[key].append(rate)
                    submits += submit_ms
                    if key == "2":
                        splits.append(split)
        finally:
            for w in workers:  # a stopped worker cannot handle the SIGTERM that stops it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
            client.close()

    rate1, rate2 = p50(rates["1"]), p50(rates["2"])
    split2: dict[str, int] = {}  # jobs per worker over the 2-worker drains
    for split in splits:
        for name, count in split.items():
            split2[name] = split2.get(name, 0) + count
    jobs = f"{cfg.drain_rounds} x {cfg.async_jobs} face jobs"
    window = f"{idle_s:.0f} s" + (" (--quick: 3 s, not 30)" if ctx.quick else "")
    rows = [
        Row(
            "async",
            f"submit: POST /async/face (cat.jpg) -> 202 (p50 of {len(submits)})",
            f"{fms(p50(submits))} (p95 {fms(pct(submits, 95))})",
        ),
        Row(
            "async",
            f"queued -> started, one idle worker: `started - created` (p50 of {len(wake)})",
            f"{fms(p50(wake))} (max {fms(max(wake))})",
        ),
        Row(
            "async",
            f"jobs/s drained by 1 worker (median of {jobs})",
            f"{rate1:.0f} jobs/s (other work on the machine meanwhile: {p50(others[0::2]):.1f} cores)",
        ),
        Row(
            "async",
            f"jobs/s drained by 2 workers (median of {jobs}; split {sorted(split2.values())})",
            f"{rate2:.0f} jobs/s (other work on the machine meanwhile: {p50(others[1::2]):.1f} cores)",
            f"1 worker {rate1:.0f} jobs/s",
            fx(ratio(rate2, rate1)),
        ),
        Row(
            "async",
            f"idle worker CPU over {window}: utime+stime, /proc",
            f"{idle_ticks} ticks = {idle_cpu_ms:.0f} ms CPU ({idle_cpu_ms / 10 / idle_s:.2f} % of a core), "
            f"{idle_switches} context switches",
        ),
    ]
    data = {
        "submit_ms": submits,
        "queued_to_started_ms": wake,
        "jobs_per_s": rates,
        "split_2_workers": splits,
        "other_cores_busy": others,
        "idle": {"seconds": idle_s, "ticks": idle_ticks, "cpu_ms": idle_cpu_ms, "switches": idle_switches},
    }
    return rows, data


# -- batch ------------------------------------------------------------------------------------------
SUMMARY = re.compile(r"batch run \w+: (\d+) done, (\d+) failed, (\d+) to retry.* in ([\d.]+) s")


def bench_batch(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, n = ctx.cfg, ctx.cfg.batch_items
    client = Http(gateway(ctx).url)
    try:
        rows_cli = iris_rows(n, SEED)
        doc, _ = client.json("POST", "/batch/items", {"model": "iris", "data": rows_cli}, expect=(201,))
        if doc["count"] != n:
            raise BenchError(f"registered {doc['count']} items, not {n}")
        cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(ctx.models)]
        cmd += ["--data-dir", str(ctx.data), "batch", "--now"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300)
        wall_s = time.perf_counter() - t0
        found = SUMMARY.search(proc.stdout)
        if proc.returncode != 0 or found is None:
            raise BenchError(
                f"batch --now exited {proc.returncode}: {proc.stdout[-500:]}{proc.stderr[-1500:]}"
            )
        done, failed, retried, run_s = int(found[1]), int(found[2]), int(found[3]), float(found[4])
        if (done, failed, retried) != (n, 0, 0):
            raise BenchError(f"batch --now: {found[0]}")
        cli_rate = done / run_s

        rows_api = iris_rows(n, SEED + 1)
        client.json("POST", "/batch/items", {"model": "iris", "data": rows_api}, expect=(201,))
    finally:
        client.close()
    storage = Storage.in_dir(ctx.data)
    try:
        stats = BatchRunner(ctx.engine, storage, RunnerOptions()).run_pending()
    finally:
        storage.close()
    if (stats.done, stats.failed) != (n, 0):
        raise BenchError(f"BatchRunner: {stats.summary()}")

    x = np.asarray(rows_cli, np.float32)
    ctx.engine.predict("iris", {"float_input": x[:1]})
    t0 = time.perf_counter()
    for row in x:
        ctx.engine.predict("iris", {"float_input": row[None]})
    loop_a = n / (time.perf_counter() - t0)

    m = min(n, cfg.loop_record_max)
    loop_store = Storage.in_dir(ctx.tmp / "loop-data")  # a database of its own, on the same disk
    try:
        t0 = time.perf_counter()
        for row in x[:m]:
            pred = ctx.engine.predict("iris", {"float_input": row[None]})
            with loop_store.transaction() as conn:
                loop_store.record_result(
                    conn, source="bench", model=pred.model, version=pred.version, body=pred.results[0]
                )
        loop_b = m / (time.perf_counter() - t0)
    finally:
        loop_store.close()

    against = f"loop A {loop_a:,.0f} / loop B {loop_b:,.0f} items/s"
    rows = [
        Row("batch", f"loop A: single thread, `Engine.predict` per item, {n} rows", f"{loop_a:,.0f} items/s"),
        Row(
            "batch",
            f"loop B: single thread, predict + record each result (1 transaction each), {m} rows",
            f"{loop_b:,.0f} items/s",
        ),
        Row(
            "batch",
            f"`edge-agent batch --now`, {n} iris rows (run time from its summary)",
            f"{cli_rate:,.0f} items/s ({n / wall_s:,.0f} incl. process start)",
            against,
            f"{fx(ratio(cli_rate, loop_a))} / {fx(ratio(cli_rate, loop_b))}",
        ),
        Row(
            "batch",
            f"`BatchRunner.run_pending()` in-process, {n} iris rows",
            f"{stats.items_per_s:,.0f} items/s",
            against,
            f"{fx(ratio(stats.items_per_s, loop_a))} / {fx(ratio(stats.items_per_s, loop_b))}",
        ),
    ]
    data = {
        "items": n,
        "cli": {"items_per_s": cli_rate, "run_s": run_s, "wall_s": wall_s, "summary": found[0]},
        "runner": {"items_per_s": stats.items_per_s, "elapsed_s": stats.elapsed_s},
        "loop_predict": {"items": n, "items_per_s": loop_a},
        "loop_predict_record": {"items": m, "items_per_s": loop_b},
    }
    return rows, data


# -- camera -----------------------------------------------------------------------------------------
def face_video(ctx: Ctx) -> Path:
    if ctx.video is None:
        face, blank = ctx.cfg.video_frames
        path = ctx.tmp / "face.avi"
        write_face_video(path, face_frames=face, blank_frames=blank)
        ctx.video = path
    return ctx.video


def bench_camera(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, video = ctx.cfg, face_video(ctx)
    frames = read_frames(video)
    model = ctx.engine.model("face")
    spec = model.manifest.preprocessing
    if spec is None:
        raise BenchError("face has no image preprocessing")
    prepared = [transform(f, spec)[0][None] for f in frames]
    k, per_round = len(frames), max(60, cfg.camera_frames // 3)
    rates: dict[str, list[float]] = {"model": [], "pipeline": []}

    def in_process_round() -> None:
        """The model alone on prepared tensors, then the role's per-frame work minus the commit."""
        t0 = time.perf_counter()
        for i in range(per_round):
            ctx.engine.infer(model, {spec.input: prepared[i % k]})
        rates["model"].append(per_round / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(per_round):
            tensor, geo = transform(frames[i % k], spec)
            postprocess(model.manifest, ctx.engine.infer(model, {spec.input: tensor[None]}), [geo])
        rates["pipeline"].append(per_round / (time.perf_counter() - t0))

    for tensor in prepared[:5]:  # warm-up
        ctx.engine.infer(model, {spec.input: tensor})
    rounds = 1 if ctx.quick else 3
    for _ in range(rounds):  # rounds before and after the role run: the machine's noise on both sides
        in_process_round()
    peak: dict[str, int] = {}
    with camera(
        ctx.models,
        ctx.tmp / "camera-data",
        str(video),
        "--max-frames",
        str(cfg.camera_frames),
        realtime=False,
        fps=1000,
        loop=True,
    ) as run:
        while run.proc.poll() is None:
            with contextlib.suppress(OSError):
                peak = proc_memory(run.proc.pid)
            time.sleep(0.1)
        code = run.wait(120)
        status = run.status()
        if code != 0 or status.get("state") != "max_frames":
            raise BenchError(f"camera role exited {code}, state {status.get('state')}:\n{run.logs()[-2000:]}")
    for _ in range(rounds):
        in_process_round()
    role_fps = float(status["fps_avg"])
    model_fps, pipeline_fps = p50(rates["model"]), p50(rates["pipeline"])

    h, w = frames[0].shape[:2]
    rows = [
        Row(
            "camera",
            f"role, unthrottled (realtime=false, fps=1000), {cfg.camera_frames} frames {w}x{h} MJPG, face",
            f"{role_fps:.0f} frames/s (infer {status['infer_ms_avg']:.2f} + record "
            f"{status['record_ms_avg']:.2f} ms/frame, {status['frames_dropped']} dropped)",
            f"model alone in-process {model_fps:.0f} frames/s",
            fx(ratio(role_fps, model_fps)),
        ),
        Row(
            "camera",
            "in-process on the same decoded frames: transform + infer + postprocess",
            f"{pipeline_fps:.0f} frames/s",
            f"model alone {model_fps:.0f} frames/s",
            fx(ratio(pipeline_fps, model_fps)),
        ),
    ]
    data = {
        "role": status,
        "role_memory_kb": peak,
        "in_process_fps": rates,
        "frames_per_round": per_round,
        "frames": cfg.camera_frames,
    }
    return rows, data


# -- memory: edge-agent up ----------------------------------------------------------------------------
def all_in_one_available() -> bool:
    """The supervisor implements the all-in-one profile (the CLI accepts the flag either way)."""
    try:
        return "all-in-one" in SUPERVISOR_SOURCE.read_text()
    except OSError:
        return False


@dataclass(slots=True)
class UpRun:
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path
    url: str
    prep_url: str
    model_urls: dict[str, str]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_up(ctx: Ctx, name: str, profile: str | None) -> Iterator[UpRun]:
    """``edge-agent up`` with every role; SIGTERM at the end, and SIGKILL for anything left."""
    data = ctx.tmp / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    port, prep_port, *ports = free_ports(2 + len(OVR))
    model_urls = {n: f"http://127.0.0.1:{p}" for n, p in zip(OVR, ports, strict=True)}
    env = clean_env(
        EDGE_PORT=str(port),
        EDGE_UP__ROLES=json.dumps(UP_ROLES),
        EDGE_UP__RESTART_BACKOFF_S="1",
        EDGE_SERVICES__PREP_PORT=str(prep_port),
        EDGE_SERVICES__PREP_URL=f"http://127.0.0.1:{prep_port}",
        EDGE_SERVICES__MODELS=json.dumps(model_urls),
        EDGE_CAMERA__SOURCE=str(face_video(ctx)),
        EDGE_CAMERA__LOOP="true",
        EDGE_BATCH__INTERVAL_S="3600",  # runs when rung (POST /batch/run)
    )
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(ctx.models), "--data-dir", str(data)]
    cmd += ["up", *(["--profile", profile] if profile else [])]
    log = data / "up.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    run = UpRun(proc, data, log, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prep_port}", model_urls)
    seen: set[int] = set()
    try:
        yield run
    finally:
        with contextlib.suppress(OSError):
            seen.update(descendants(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in sorted(seen):  # children the supervisor did not stop (it was killed, say)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=2)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_up(run: UpRun, multi: bool, timeout: float = 120.0) -> None:
    def ready() -> bool:
        if run.proc.poll() is not None:
            raise BenchError(f"edge-agent up exited with {run.proc.returncode}:\n{run.logs()[-3000:]}")
        if not _healthy(f"{run.url}/v2/health/ready"):
            return False
        if not all(_healthy(f"{u}/health") for u in (run.prep_url, *run.model_urls.values())):
            return False
        if multi:  # the supervisor's view: every role running
            roles = (read_status(run.data) or {}).get("roles", [])
            if len(roles) != len(UP_ROLES) or any(r["state"] != "running" for r in roles):
                return False
        cam = run.data / "camera-status.json"
        return cam.exists() and json.loads(cam.read_text() or "{}").get("frames_inferred", 0) >= 1

    wait_for(ready, timeout, "every role of edge-agent up", step=0.2)


def warm_up(run: UpRun) -> list[str]:
    """One request through every role, so each has loaded what it serves; returns what failed."""
    failed: list[str] = []
    client = Http(run.url)

    def step(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except (BenchError, OSError, http.client.HTTPException, KeyError, ValueError) as exc:
            failed.append(f"{name}: {exc}")

    def job() -> None:
        doc, _ = client.json("POST", "/async/face", CAT, JPEG, expect=(202,))
        jid = doc["job_id"]
        wait_for(
            lambda: client.json("GET", f"/jobs/{jid}")[0]["status"] == "done", 60, "the warm-up job", 0.05
        )

    def batch() -> None:
        client.json("POST", "/batch/items", {"model": "iris", "data": iris_rows(64, SEED + 2)}, expect=(201,))
        client.json("POST", "/batch/run", b"", expect=(202,))
        wait_for(
            lambda: client.json("GET", "/batch?model=iris")[0]["counts"]["done"] >= 64,
            60,
            "the warm-up batch run",
            0.05,
        )

    def prep() -> None:
        status, data, _ = Http(run.prep_url).request("POST", "/prep/face", CAT, JPEG)
        if status != 200:
            raise BenchError(f"prep: HTTP {status}: {data[:200]!r}")

    try:
        step("gateway face", lambda: client.json("POST", "/v1/models/face/predict", CAT, JPEG))
        step("gateway iris", lambda: client.json("POST", "/predict", {"data": [IRIS_ROW]}))
        step("microservice", lambda: client.json("POST", "/microservice/iris", {"data": [IRIS_ROW]}))
        step("prep", prep)
        step("worker", job)
        step("batch", batch)
    finally:
        client.close()
    time.sleep(1.0)  # let the camera infer a few more frames at its 2 fps
    return failed


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def mem_cell(mem: dict[str, int]) -> str:
    return f"RSS {mib(mem['VmRSS'])} (peak {mib(mem['VmHWM'])}, PSS {mib(mem.get('Pss', 0))})"


def bench_memory(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    data: dict[str, Any] = {"roles": {}}
    total = {"VmRSS": 0, "VmHWM": 0, "Pss": 0, "processes": 0}
    with run_up(ctx, "up", None) as run:
        wait_up(run, multi=True)
        failed = warm_up(run)
        if failed:
            raise BenchError(f"warm-up failed: {failed}\n{run.logs()[-2000:]}")
        status = read_status(run.data) or {}
        for role in status.get("roles", []):
            if role.get("pid") is None:
                raise BenchError(f"role {role['role']} is not running: {role}")
            mem = tree_memory(int(role["pid"]))
            data["roles"][role["role"]] = mem
            for key in total:
                total[key] += mem[key]
            rows.append(
                Row(
                    "memory",
                    f"{role['role']} after warm-up ({plural(mem['processes'], 'process')})",
                    mem_cell(mem),
                )
            )
        sup = proc_memory(run.proc.pid)
        data["supervisor"] = sup
        for key in ("VmRSS", "VmHWM", "Pss"):
            total[key] += sup.get(key, 0)
        total["processes"] += 1
        rows.append(Row("memory", "`edge-agent up` supervisor (1 process)", mem_cell(sup)))
        data["up_total"] = total
        data["up_tree"] = tree_memory(run.proc.pid)  # cross-check: every process under the supervisor

    against, r = "all-in-one: not available", "-"
    data["all_in_one"] = None
    if all_in_one_available():
        try:
            with run_up(ctx, "all-in-one", "all-in-one") as aio:
                wait_up(aio, multi=False)
                aio_failed = warm_up(aio)
                aio_mem = tree_memory(aio.proc.pid)
            data["all_in_one"] = {"memory": aio_mem, "warm_up_failed": aio_failed}
            if aio_failed:
                ctx.errors["memory/all-in-one"] = f"warm-up failed: {aio_failed}"
            rows.append(
                Row(
                    "memory",
                    f"`edge-agent up --profile all-in-one`, same roles, after warm-up "
                    f"({plural(aio_mem['processes'], 'process')})",
                    mem_cell(aio_mem),
                )
            )
            against = (
                f"all-in-one: RSS {mib(aio_mem['VmRSS'])}, PSS {mib(aio_mem['Pss'])} "
                f"({plural(aio_mem['processes'], 'process')})"
            )
            r = (
                f"RSS {fx(ratio(total['VmRSS'], aio_mem['VmRSS']))}, "
                f"PSS {fx(ratio(total['Pss'], aio_mem['Pss']))}"
            )
        except Exception as exc:  # the multi-process rows stand on their own
            ctx.errors["memory/all-in-one"] = f"{type(exc).__name__}: {exc}"
            data["all_in_one"] = {"error": ctx.errors["memory/all-in-one"]}
            against = "all-in-one: failed (see below)"
    rows.append(
        Row(
            "memory",
            f"`edge-agent up`, {len(UP_ROLES)} roles + supervisor: sum "
            f"({plural(total['processes'], 'process')})",
            f"RSS {mib(total['VmRSS'])}, PSS {mib(total['Pss'])}",
            against,
            r,
        )
    )
    return rows, data


# -- report ----------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "edge-agent": dist("edge-agent"),
        "numpy": np.__version__,
        "onnxruntime": dist("onnxruntime"),
        "ai-edge-litert": dist("ai-edge-litert"),
        "opencv": dist("opencv-python-headless"),
        "uvicorn": dist("uvicorn"),
        "fastapi": dist("fastapi"),
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def header_lines(argv: Sequence[str]) -> list[str]:
    v = versions()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"command: {shlex.join([sys.executable, *argv])}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"CPUs: {os.cpu_count()} ({usable} usable), {cpu_model()}, {platform.machine()}; "
        "every role and the in-process engine: 1 intra-op thread",
        f"load average at start: {load_text()}",
    ]


def table_lines(rows: Sequence[Row]) -> list[str]:
    head = ["section", "what", "measured", "against", "ratio", "target"]
    body = [[r.section, r.what, r.measured, r.against, r.ratio, r.target] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [fmt(head), "| " + " | ".join("-" * w for w in widths) + " |", *(fmt(b) for b in body)]


FOOTNOTES = {
    "caches": [
        "Prediction cache: each pair is a miss (cat.jpg with 8 random bytes after its JPEG end marker: a "
        "new key, the same decode) then a hit on the same bytes, `POST /v1/models/face/predict`. Server = "
        "the answer's `timings_ms.total`; client = the HTTP round trip on one keep-alive connection "
        "(`http.client`), which also carries the 110 kB body up and the answer back on every request. "
        "By digest: the client sends the image's sha256 first (`GET /v1/models/face/predictions/{sha256}`, "
        "no body); a hit answers there, a miss (404 `prediction_not_cached`) costs that GET plus the upload.",
        "Data cache: `POST /v1/models/face/predict/data/{id}` with `Cache-Control: no-cache`; a miss "
        "decodes + letterboxes the stored JPEG (the item deleted and registered again first), a hit reads "
        "the stored tensor.",
    ],
    "microservice": [
        "Microservice: requests and in-process triples alternate; in-process = `Engine.predict` on "
        "iris_setosa, iris_versicolor, iris_virginica one after another in this process.",
    ],
    "async": [
        "Async: submit validates the image (decodes it) before queuing, then one SQLite commit. Drains: "
        "both workers are SIGSTOPped, the jobs submitted, one or both workers SIGCONTed; jobs/s = jobs / "
        "(last `finished` - SIGCONT); 1-worker and 2-worker drains alternate. Each job: decode cat.jpg + "
        "BlazeFace + one result transaction. Queued -> started: one job at a time, worker asleep in "
        "`select()` on its doorbell.",
    ],
    "batch": [
        "Batch: `batch --now` and `BatchRunner` (parallelism 2, chunk 32) predict a chunk per runtime "
        "call and record a chunk per transaction; loop A calls `Engine.predict` on one row at a time "
        "and stores nothing; loop B also records each result with its outbox entry in its own "
        "transaction (one fsync each, as the camera role does). Ratio = batch / loop A, batch / loop B.",
    ],
    "camera": [
        "Camera: frames/s = the role's `fps_avg` (first to last inferred frame) from camera-status.json; "
        "the role decodes, infers and commits one result per frame (a drop of 1 is the frame the reader "
        "held when `--max-frames` stopped it). In-process figures: median of rounds before and after "
        "the role run; model alone = `Engine.infer` on tensors prepared beforehand from the same "
        "decoded frames (what the raw model can do), the pipeline adds `transform` and `postprocess`.",
    ],
    "memory": [
        "Memory: `edge-agent up` with roles " + json.dumps(UP_ROLES) + ", after one request through "
        "each (face + iris predict, microservice, prep, one async job, a 64-item batch run; the camera "
        "plays a looped file at 2 fps). RSS counts shared pages (libraries) once per process, so the "
        "RSS sum overstates the total; PSS shares them out and adds up.",
    ],
}


def run_section(
    name: str, label: str, fn: Callable[[], tuple[list[Row], dict[str, Any]]], errors: dict[str, str]
) -> tuple[list[Row], dict[str, Any]]:
    print(f"  {label} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        rows, data = fn()
    except Exception as exc:  # one broken section must not hide the others' numbers
        errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"  {label}: FAILED: {errors[name]}", file=sys.stderr, flush=True)
        return [Row(label, "error (see below)", "-")], {"error": errors[name]}
    data["elapsed_s"] = time.perf_counter() - t0
    print(f"  {label}: {data['elapsed_s']:.1f} s", file=sys.stderr, flush=True)
    return rows, data


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer samples, a 3 s idle window (< 90 s in all)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SECTION",
        help=f"skip a section (repeat or comma-separate): {', '.join(SECTIONS)}",
    )
    args = p.parse_args(argv)
    skip = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    unknown = sorted(skip - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    args.skip = skip
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: every process is stopped


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    header = header_lines([sys.argv[0], *argv])
    print("\n".join(header), flush=True)
    wanted = [s for s in SECTIONS if s not in args.skip]
    rows: list[Row] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        models = copy_models(tmp / "models", MODEL_NAMES)
        engine = Engine(
            ModelStore(models, tmp / "bench-state" / "store-state.json"),
            EngineOptions(backend=BackendOptions(intra_op_threads=1, inter_op_threads=1)),
        )
        stack.callback(engine.close)
        for name in ("face", *OVR, "iris"):
            engine.model(name)
        ctx = Ctx(tmp, models, tmp / "data", cfg, args.quick, stack, engine, errors=errors)
        plan: list[tuple[str, str, Callable[[Ctx], tuple[list[Row], dict[str, Any]]]]] = [
            ("caches", "prediction and data cache", bench_caches),
            ("microservice", "microservice", bench_microservice),
            ("async", "async", bench_async),
            ("batch", "batch", bench_batch),
            ("camera", "camera", bench_camera),
            ("memory", "memory (edge-agent up)", bench_memory),
        ]
        needs_gateway = {"caches", "microservice", "async", "batch"} & set(wanted)
        if needs_gateway:
            print("  starting the gateway and model@NAME roles ...", file=sys.stderr, flush=True)
            try:
                start_gateway(ctx, with_services="microservice" in wanted)
            except Exception as exc:
                for name in sorted(needs_gateway):
                    errors[name] = f"gateway did not start: {type(exc).__name__}: {exc}"
        for name, label, fn in plan:
            if name not in wanted:
                continue
            if name in errors:
                rows.append(Row(label, "error (see below)", "-"))
                results[name] = {"error": errors[name]}
                continue
            section_rows, results[name] = run_section(name, label, functools.partial(fn, ctx), errors)
            rows += section_rows
    elapsed = time.perf_counter() - started
    end_load = load_text()
    print(f"load average at end: {end_load}")
    print()
    lines = table_lines(rows)
    notes = [""] + [n for s in wanted for n in FOOTNOTES[s]]
    notes += [f"ERROR: {name}: {msg}" for name, msg in errors.items()]
    print("\n".join([*lines, *notes]))
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)
    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": versions(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "load_start": header[-1].removeprefix("load average at start: "),
            "load_end": end_load,
            "quick": args.quick,
            "budget": asdict(cfg),
            "skipped": sorted(args.skip),
            "elapsed_s": elapsed,
            "rows": [asdict(r) for r in rows],
            "sections": results,
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
