"""Patterns benchmark (bench/patterns.py): memory of the roles under `edge-agent up` (the supervisor),
after warm-up."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# -- memory: edge-agent up ----------------------------------------------------------------------------
from bench.common.procs import free_ports
from bench.patterns_camera import face_video
from bench.patterns_support import (
    CAT,
    IRIS_ROW,
    JPEG,
    OVR,
    SEED,
    SUPERVISOR_SOURCE,
    UP_ROLES,
    BenchError,
    Ctx,
    Http,
    Row,
    alive,
    clean_env,
    descendants,
    fx,
    iris_rows,
    mib,
    proc_memory,
    ratio,
    tree_memory,
    wait_for,
)
from edge_agent.rolestatus import read_status
from tests.conftest import ROOT


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
