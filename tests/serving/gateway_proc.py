"""Start the real gateway (``edge-agent serve``) as a process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open until every one is chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Gateway:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_gateway(
    model_dir: Path, data_dir: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Gateway]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"gateway-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--model-dir",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "serve",
        "--port",
        str(port),
        *args,
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    gw = Gateway(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.logs()}")
            try:
                if httpx.get(f"{gw.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready in 90 s:\n{gw.logs()}")
            time.sleep(0.2)
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
