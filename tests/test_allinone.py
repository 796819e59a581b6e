"""The all-in-one profile: every pattern served by ONE process, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MODELS, ROOT, copy_models
from tests.serving.gateway_proc import free_ports

IRIS = ["iris_setosa", "iris_versicolor", "iris_virginica"]


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_all_in_one_serves_every_pattern_in_one_process(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris", *IRIS, "face", "digits", "digits_int8"])
    port, prep_port, *others = free_ports(2 + len(IRIS) + 1)
    model_ports = dict(zip([*IRIS, "face"], others, strict=True))
    roles = ["serve", "worker", "batch", "prep", *(f"model@{n}" for n in model_ports)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(
        EDGE_PORT=str(port),
        EDGE_UP__ROLES=json.dumps(roles),
        EDGE_UP__PROFILE="all-in-one",
        EDGE_SERVICES__PREP_PORT=str(prep_port),
        EDGE_SERVICES__PREP_URL=f"http://127.0.0.1:{prep_port}",
        EDGE_SERVICES__MODELS=json.dumps({n: f"http://127.0.0.1:{p}" for n, p in model_ports.items()}),
        EDGE_BATCH__INTERVAL_S="3600",
    )
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--model-dir",
        str(root),
        "--data-dir",
        str(tmp_path / "d"),
        "up",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 90, "the gateway")
        # synchronous
        r = httpx.post(f"{url}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
        assert r.status_code == 200
        # asynchronous: the worker thread of the same process runs the job
        job = httpx.post(f"{url}/async/iris", json={"data": [[6.3, 3.3, 6.0, 2.5]]}).json()["job_id"]
        done = _wait(
            lambda: (j := httpx.get(f"{url}/jobs/{job}").json())["status"] == "done" and j, 30, "the job"
        )
        assert done["result"]["results"][0]["label"] == "virginica"
        # batch: registered, then run on demand by the batch thread
        ids = httpx.post(
            f"{url}/batch/items", json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]] * 3}
        ).json()
        assert httpx.post(f"{url}/batch/run").status_code == 202
        _wait(lambda: httpx.get(f"{url}/batch").json()["counts"].get("done", 0) >= 3, 30, "the batch run")
        # microservice: three model servers on their own ports, same process
        ms = _wait(
            lambda: httpx.post(f"{url}/microservice/iris", json={"data": [[1.0, 2.0, 3.0, 4.0]]}),
            30,
            "the model services",
        )
        assert ms.status_code == 200 and not ms.json()["unavailable"], ms.text
        # prep-pred: the prep server and model@face of the same process
        astronaut = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()
        pp = httpx.post(f"{url}/prep-pred/face", content=astronaut, headers={"content-type": "image/png"})
        assert pp.status_code == 200, pp.text
        health = httpx.get(f"{url}/health/all").json()
        assert {s["name"]: s["status"] for s in health["services"]}["prep"] == "up"
        assert ids  # registered ids came back
        # one process: nothing was forked or spawned
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
        assert children == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
