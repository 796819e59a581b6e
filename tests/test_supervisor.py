"""`edge-agent up`: roles as child processes, restarted when they crash, all
stopped on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.errors import ConfigError
from edge_agent.roles import role_command
from edge_agent.rolestatus import read_status
from tests.conftest import ROOT, copy_models
from tests.serving.gateway_proc import free_port


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_role_specs() -> None:
    assert role_command("worker") == ["worker"]
    assert role_command("model@iris_setosa") == ["model", "iris_setosa"]
    with pytest.raises(ConfigError, match="unknown role 'nope'"):
        role_command("nope")
    with pytest.raises(ConfigError, match="model@NAME"):
        role_command("model")


def test_up_restarts_a_killed_role_and_stops_all_on_sigterm(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(EDGE_PORT=str(port), EDGE_UP__ROLES=json.dumps(["serve"]), EDGE_UP__RESTART_BACKOFF_S="0.2")
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(root), "--data-dir", str(data), "up"]
    sup = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _serving(url), 60, "the gateway role")
        status = _wait(lambda: read_status(data), 10, "the status file")
        first_pid = status["roles"][0]["pid"]
        assert status["roles"][0]["state"] == "running" and first_pid
        os.kill(first_pid, signal.SIGKILL)  # a crash
        restarted = _wait(
            lambda: (s := read_status(data)) and s["roles"][0]["pid"] not in (None, first_pid) and s,
            30,
            "the restart",
        )
        assert (
            restarted["roles"][0]["restarts"] == 1 and restarted["roles"][0]["last_exit"] == -signal.SIGKILL
        )
        _wait(lambda: _serving(url), 60, "the restarted gateway")
        assert httpx.post(f"{url}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
        health = httpx.get(f"{url}/health/all").json()
        assert [(r["role"], r["state"], r["restarts"]) for r in health["roles"]] == [("serve", "running", 1)]
        child_pid = restarted["roles"][0]["pid"]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=15) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(child_pid, 0)
        assert read_status(data)["roles"][0]["state"] == "stopped"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
