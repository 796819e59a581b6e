"""Power cuts, repeatedly: the whole `edge-agent up` process group (gateway, worker, batch,
camera) SIGKILLed at a random moment of mixed traffic (async jobs, batch items, camera frames
from a file, model versions being activated), then started again. After every round:

- ``PRAGMA integrity_check`` is ok;
- every job answered 202 and every item answered 201 before the kill is done exactly once
  (one result, with the job's or item's id);
- the version serving is the active one and passes its self-test (no half-installed version);
- the outbox and the results agree (every result is waiting for delivery; no sync role here).

``CHAOS_ROUNDS`` sets the number of rounds (default 5 in the suite; the long run in
docs/operations.md uses 50). SIGKILL of every process is what a power cut does to the
processes; what it also does to the page cache is not simulated (see docs/operations.md)."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from edge_agent.runtime.store import ModelStore
from edge_agent.storage import DB_NAME
from tests.conftest import copy_models
from tests.device import Device, wait_for
from tests.patterns.videos import write_face_video

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "5"))


class Traffic:
    """Clients that remember what the device acknowledged."""

    def __init__(self, url: str, activate: bool = True, pace_s: float = 0.0) -> None:
        self.url = url
        self.pace_s = pace_s  # a pause between requests of one client
        self.jobs: list[str] = []
        self.items: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._async, daemon=True),
            threading.Thread(target=self._batch, daemon=True),
        ]
        if activate:  # versions switched through the local API (the OTA chaos test installs them)
            self.threads.append(threading.Thread(target=self._activate, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _loop(self, one) -> None:  # type: ignore[no-untyped-def]
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                try:
                    one(c)
                except httpx.TransportError:  # the device died mid-request: nothing was promised
                    return
                self.stop.wait(self.pace_s)

    def _async(self) -> None:
        def one(c: httpx.Client) -> None:
            x = [[random.uniform(4, 7), 3.0, random.uniform(1, 6), 1.0]]
            r = c.post(f"{self.url}/async/iris", json={"data": x})
            if r.status_code == 202:
                self.jobs.append(r.json()["job_id"])

        self._loop(one)

    def _batch(self) -> None:
        def one(c: httpx.Client) -> None:
            items = [{"data": [random.uniform(4, 7), 3.0, 4.0, 1.0]} for _ in range(5)]
            r = c.post(f"{self.url}/batch/items", json={"model": "iris", "items": items})
            if r.status_code == 201:
                self.items += r.json()["ids"]
            c.post(f"{self.url}/batch/run")

        self._loop(one)

    def _activate(self) -> None:
        def one(c: httpx.Client) -> None:
            c.post(f"{self.url}/v1/models/iris/versions/{random.choice('12')}/activate")
            time.sleep(0.2)

        self._loop(one)


def _check(dev: Device, data: Path, jobs: list[str], items: list[str], synced: bool = False) -> None:
    """The round's promises (module docstring). ``synced``: a sync role runs, so delivered results
    have left the outbox; then every outbox entry must still have its result."""
    with sqlite3.connect(data / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    url = dev.url
    wait_for(lambda: httpx.get(f"{url}/jobs").json()["counts"]["queued"] == 0, 120, "the queued jobs")
    wait_for(lambda: httpx.get(f"{url}/jobs").json()["counts"]["running"] == 0, 120, "the running jobs")
    wait_for(lambda: httpx.get(f"{url}/batch").json()["counts"]["pending"] == 0, 120, "the pending items")
    wait_for(lambda: httpx.get(f"{url}/batch").json()["counts"]["running"] == 0, 120, "the running items")
    with sqlite3.connect(data / DB_NAME) as conn:
        conn.execute("BEGIN")  # one snapshot: the camera keeps recording while these are read
        status = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
        status.update(conn.execute("SELECT id, status FROM batch_items").fetchall())
        results = [r[0] for r in conn.execute("SELECT id FROM results WHERE source IN ('async', 'batch')")]
        outbox = {r[0] for r in conn.execute("SELECT id FROM outbox WHERE kind = 'result'")}
        all_results = {r[0] for r in conn.execute("SELECT id FROM results")}
    assert len(results) == len(set(results))  # (a primary key: kept as the statement of intent)
    done = set(results)
    for wid in [*jobs, *items]:
        assert status.get(wid) == "done" and wid in done, (wid, status.get(wid))
    if synced:
        assert outbox <= all_results, outbox - all_results  # no entry without its result
    else:
        assert outbox == all_results  # every result waits for delivery, no entry without its result
    serving_is_whole(dev, data)


def serving_is_whole(dev: Device, data: Path) -> str:
    """The version serving is the store's active one and answers (it passed its self-test when it
    was activated and passes it now): no half-installed version serves. Versions may switch
    meanwhile (an update being installed): read the pointer before and after."""
    url = dev.url
    for _ in range(50):
        pointer = ModelStore(dev.models, data / "store-state.json").active_version("iris")
        model = httpx.get(f"{url}/v1/models/iris").json()
        r = httpx.post(f"{url}/v1/models/iris/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
        again = ModelStore(dev.models, data / "store-state.json").active_version("iris")
        if pointer == again == model["active_version"] and r.status_code == 200:
            assert model["load_error"] is None, model
            if r.json()["version"] == pointer:
                return pointer
        time.sleep(0.2)
    raise AssertionError(f"iris: pointer {pointer}, gateway {model}, predict {r.status_code} {r.text}")


def test_sigkill_of_the_whole_device_at_random_moments(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models", ["iris", "face"])
    v2 = models / "iris" / "2"
    shutil.copytree(models / "iris" / "1", v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    (v2 / "manifest.json").write_text(json.dumps({**manifest, "version": "2"}))
    video = write_face_video(tmp_path / "face.avi").path
    data = tmp_path / "data"
    env = {
        "EDGE_UP__ROLES": json.dumps(["serve", "worker", "batch", "camera"]),
        "EDGE_UP__RESTART_BACKOFF_S": "0.2",
        "EDGE_BATCH__INTERVAL_S": "1",
        "EDGE_CAMERA__SOURCE": str(video),
        "EDGE_CAMERA__LOOP": "true",
        "EDGE_CAMERA__FPS": "10",
        "EDGE_CAMERA__COMMIT_INTERVAL_S": "0.3",
    }
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "14")))
    jobs: list[str] = []
    items: list[str] = []
    dev = Device(models, data, env, tmp_path / "up.log")
    try:
        for rnd in range(ROUNDS):
            dev.start()
            if rnd:
                _check(dev, data, jobs, items)
            traffic = Traffic(dev.url)
            traffic.start()
            time.sleep(rng.uniform(0.3, 3.0))
            dev.kill()  # a power cut, for every process at once
            traffic.join()
            jobs += traffic.jobs
            items += traffic.items
        dev.start()
        _check(dev, data, jobs, items)
        assert len(jobs) > ROUNDS and len(items) > ROUNDS  # the kills did land in traffic
        with sqlite3.connect(data / DB_NAME) as conn:
            assert conn.execute("SELECT COUNT(*) FROM results WHERE source = 'camera'").fetchone()[0] > 0
    finally:
        dev.stop()
