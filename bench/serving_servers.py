"""Serving benchmark (bench/serving.py): the servers it measures (the gateway, the naive FastAPI
server) as pinned child processes, and the quiet-machine gate."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.common.procs import PDEATHSIG, env_without, free_port
from bench.serving_cases import (
    NO_CACHE_VAR,
    QUIET_CORES,
    READY_TIMEOUT_S,
    ROOT,
    STOP_TIMEOUT_S,
    Case,
)


# -- processes -------------------------------------------------------------------------------------
def spawn(cmd: Sequence[str], core: int | None, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = [sys.executable, "-c", PDEATHSIG, str(os.getpid())]
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
    return env_without("EDGE_")


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


def gateway(
    case: Case,
    batching: dict[str, Any],
    core: int | None,
    tmp: Path,
    label: str,
    extra_env: dict[str, str] | None = None,
) -> Any:
    """``edge-agent serve`` of ``case``'s store, prediction cache off; ``extra_env`` on top."""
    port = free_port()
    data_dir = tmp / f"data-{case.name}-{port}"
    data_dir.mkdir(parents=True)
    env = _clean_env() | {
        "EDGE_BATCHING": json.dumps({case.name: batching}),
        "EDGE_LOG_LEVEL": "WARNING",
        "EDGE_DEFAULT_MODEL": case.name,
    }
    env.update(_no_cache_env())
    env.update(extra_env or {})
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
