"""Power cuts while an update arrives over the fleet link: `edge-agent up` (gateway, worker, batch,
sync) connected to a real mosquitto and the real cloud (`cloud-sync ingest` + `api`). Every round
the cloud deploys a new signed iris version (`cloud-sync models publish`, `POST /deployments`) and
the whole process group is SIGKILLed at a random moment of async jobs and batch items while the
sync role downloads, verifies, installs or activates it; then it is started again (the retained
desired state is delivered again). After every round:

- ``PRAGMA integrity_check`` is ok; every job answered 202 and item answered 201 is done exactly
  once; no outbox entry without its result;
- no half-installed version serves: the version serving is the store's active one and answers,
  ``edge-agent models verify`` (manifests and sha256 of every installed version) and ``models
  selftest`` (the active version's golden self-test) pass, no version directory is partial.

At the end the last deployment is active and every result the device recorded reached the cloud,
stored exactly once. ``CHAOS_ROUNDS`` sets the rounds (default 3 in the suite; the long run is in
docs/operations.md)."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from demo.fleet import MOSQUITTO, Fleet
from edge_agent.storage import DB_NAME
from tests.conftest import ROOT, copy_models
from tests.device import Device, wait_for
from tests.test_power_cut import Traffic, _check, serving_is_whole

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "3"))
DEVICE = "chaos-ota-1"


def _publish(fleet: Fleet, version: str) -> None:
    staged = fleet.work / "staging" / "iris" / version
    shutil.copytree(ROOT / "models" / "iris" / "1", staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    (staged / "manifest.json").write_text(json.dumps({**manifest, "version": version}, indent=2))
    fleet.cloud("models", "publish", str(staged))


def _deploy(fleet: Fleet, version: str) -> str:
    r = fleet.cloud_http.post(
        f"{fleet.api}/deployments",
        json={"model": "iris", "version": version, "devices": [DEVICE], "artifact_base_url": fleet.api},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _edge_agent(dev: Device, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(dev.models), "--data-dir"]
    return subprocess.run(
        [*cmd, str(dev.data), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _no_partial_version(dev: Device) -> None:
    verify = _edge_agent(dev, "models", "verify", "iris")
    assert verify.returncode == 0 and "FAILED" not in verify.stdout, verify.stdout + verify.stderr
    selftest = _edge_agent(dev, "models", "selftest", "iris")
    assert selftest.returncode == 0 and selftest.stdout.startswith("pass"), selftest.stdout + selftest.stderr
    for d in (dev.models / "iris").iterdir():  # every visible version directory is whole
        if d.is_dir() and not d.name.startswith("."):
            assert (d / "manifest.json").is_file(), f"{d} has no manifest: half-installed"


def _update_state(fleet: Fleet, dev: Device, version: str) -> str:
    """Where the update to ``version`` stands: the device's last report (as the cloud has it), or
    "installed, not active" when the version directory exists but the pointer is elsewhere."""
    last = fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json().get("last_update") or {}
    state = str(last.get("state")) if last.get("version") == version else "not started"
    if state != "active" and (dev.models / "iris" / version).is_dir():
        state += " (installed)"
    return state


def _cloud_results(fleet: Fleet) -> list[str]:
    with sqlite3.connect(fleet.cloud_env["CLOUD_DB_PATH"]) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM results WHERE device = ?", (DEVICE,))]


def _device_results(data: Path) -> tuple[list[str], int]:
    with sqlite3.connect(data / DB_NAME) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM results")]
        waiting = conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'result'").fetchone()[0]
    return ids, int(waiting)


def test_sigkill_of_the_whole_device_while_an_update_installs(tmp_path: Path) -> None:
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make setup mosquitto`"
    work = tmp_path / "fleet"
    (work / "logs").mkdir(parents=True)
    fleet = Fleet(work, devices=())
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "14")))
    data = tmp_path / "data"
    env = {
        "EDGE_DEVICE_ID": DEVICE,
        "EDGE_UP__ROLES": json.dumps(["serve", "worker", "batch", "sync"]),
        "EDGE_UP__RESTART_BACKOFF_S": "0.2",
        "EDGE_BATCH__INTERVAL_S": "1",
        "EDGE_WORKER__LEASE_S": "3",  # a job claimed before the kill is retried soon (default 30 s)
        "EDGE_BATCH__LEASE_S": "3",
        "EDGE_SYNC__BROKER_HOST": "127.0.0.1",
        "EDGE_SYNC__BROKER_PORT": str(fleet.broker_port),
        "EDGE_SYNC__TRUSTED_KEYS": str(work / "cloud" / "signing.pub.pem"),
        "EDGE_SYNC__ARTIFACT_BASE_URL": fleet.api,
        "EDGE_SYNC__ACK_TIMEOUT_S": "3",
        "EDGE_SYNC__POLL_INTERVAL_S": "0.2",
    }
    dev = Device(copy_models(tmp_path / "models", ["iris"]), data, env, tmp_path / "up.log")
    jobs: list[str] = []
    items: list[str] = []
    versions = [str(v) for v in range(2, ROUNDS + 3)]
    at_kill: list[str] = []  # where the update stood when the power was cut, per round
    t0 = time.monotonic()
    try:
        fleet.start_broker()
        fleet.start_cloud()
        for v in versions:
            _publish(fleet, v)
        print(f"cloud up, {len(versions)} versions published: {time.monotonic() - t0:.1f} s")
        for rnd in range(ROUNDS):
            dev.start()
            print(f"round {rnd}: started {time.monotonic() - t0:.1f} s")
            if rnd:
                _check(dev, data, jobs, items, synced=True)
                _no_partial_version(dev)
            print(f"round {rnd}: checked {time.monotonic() - t0:.1f} s")
            traffic = Traffic(dev.url, activate=False, pace_s=0.05)
            traffic.start()
            deploy = threading.Timer(rng.uniform(0.0, 0.5), _deploy, (fleet, versions[rnd]))
            deploy.start()
            time.sleep(rng.uniform(0.3, 3.0))  # the download, install or self-test is under way
            at_kill.append(_update_state(fleet, dev, versions[rnd]))
            dev.kill()  # a power cut, for every process at once
            deploy.join()
            traffic.join()
            jobs += traffic.jobs
            items += traffic.items
        dev.start()
        _check(dev, data, jobs, items, synced=True)
        _no_partial_version(dev)
        print(f"final check {time.monotonic() - t0:.1f} s")
        last = versions[-1]
        _deploy(fleet, last)
        wait_for(lambda: serving_is_whole(dev, data) == last, 90, f"iris {last} to serve")
        _no_partial_version(dev)
        assert not [p for p in (dev.models / "iris").iterdir() if p.is_dir() and p.name.startswith(".")]
        wait_for(lambda: _device_results(data)[1] == 0, 90, "the outbox to drain")
        device_ids, _ = _device_results(data)
        wait_for(lambda: len(_cloud_results(fleet)) >= len(device_ids), 60, "every result in the cloud")
        cloud_ids = _cloud_results(fleet)
        assert sorted(cloud_ids) == sorted(device_ids)  # each result stored once, none missing
        assert len(jobs) > ROUNDS and len(items) > ROUNDS  # the kills did land in traffic
        print(f"{ROUNDS} rounds: {len(jobs)} jobs, {len(items)} items, {len(device_ids)} results delivered")
        print("update state at each kill:", {s: at_kill.count(s) for s in sorted(set(at_kill))})
    finally:
        dev.stop()
        fleet.stop_all()
