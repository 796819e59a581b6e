"""Patterns benchmark (bench/patterns.py): its settings, rows and context, small helpers, what /proc
says about processes, and the shared gateway."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.common.procs import env_without
from edge_agent.runtime.engine import Engine
from tests.conftest import DATA, ROOT
from tests.patterns.test_async import cpu_ticks
from tests.patterns.test_prep_pred import RoleProc, Roles
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
    return env_without("EDGE_", **extra)


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
