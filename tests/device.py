"""A whole device for the tests: `edge-agent up` as a real process group, and a small
filesystem for its data directory (a size-limited tmpfs, mounted here as root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.serving.gateway_proc import free_port


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def small_filesystem(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB at ``where``; unmounted afterwards. Needs root (fails otherwise)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot mount a tmpfs (this test needs root): {done.stderr}"
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, ballast: Path, leave_bytes: int) -> None:
    """Grow ``ballast`` until about ``leave_bytes`` are free on ``path``'s filesystem (0: full)."""
    chunk = b"\0" * 65536
    with ballast.open("ab") as f:
        while (excess := free_bytes(path) - leave_bytes) > 0:
            try:
                f.write(chunk[: min(len(chunk), excess)])
                f.flush()
            except OSError:
                break


@dataclass
class Device:
    """`edge-agent up` started in its own process group (so a test can kill all of it at once)."""

    models: Path
    data: Path
    env: dict[str, str]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env.update(self.env, EDGE_PORT=str(self.port))
        cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(self.models)]
        cmd += ["--data-dir", str(self.data), "up"]
        out = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True)
        wait_for(self.ready, timeout, f"the gateway (log: {self.log})", every=0.2)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"edge-agent up exited {self.proc.returncode}:\n{self.logs()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def roles(self) -> list[dict[str, Any]]:
        doc = json.loads((self.data / "roles-status.json").read_text())
        return list(doc["roles"])

    def kill(self) -> None:
        """SIGKILL the whole process group: the supervisor and every role at the same instant."""
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9
        with suppress(ProcessLookupError):  # a role left behind would be a bug; never leave it running
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        return code

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def running(device: Device) -> Iterator[Device]:
    try:
        device.start()
        yield device
    finally:
        if device.proc is not None:
            device.stop()
