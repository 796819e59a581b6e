"""Batch pattern end to end: items registered over real HTTP on a real gateway
process, predicted by real ``edge-agent batch`` processes (on demand, on an
interval, woken by ``POST /batch/run``), killed with SIGKILL mid-run and
restarted: every item ends with exactly one result. Plus the item store and
the runner in-process, on real SQLite files and real models."""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from edge_agent.storage import DB_NAME, Storage
from edge_agent.workers.batch import MAX_ATTEMPTS, BatchRunner, ProgressBar, RunnerOptions
from edge_agent.workers.batch_items import BatchItems, Outcome, PayloadKind, decode_row, encode_rows, owner_id
from edge_agent.workers.schedule import batch_doorbell
from tests.conftest import MODELS, ROOT, copy_models
from tests.serving.gateway_proc import Gateway, run_gateway

ASTRONAUT = MODELS / "face" / "1" / "samples" / "astronaut.png"
CAT = Path(__file__).resolve().parents[1] / "data" / "cat.jpg"


def iris_rows(n: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    lo, hi = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    return np.round(rng.uniform(lo, hi, (n, 4)), 1).tolist()


def face_images() -> list[bytes]:
    """Four different pictures: the astronaut as PNG, smaller, mirrored (JPEG), and a cat."""
    img = cv2.imread(str(ASTRONAUT))
    small = cv2.imencode(".jpg", cv2.resize(img, (256, 256)))[1].tobytes()
    mirrored = cv2.imencode(".jpg", cv2.flip(img, 1))[1].tobytes()
    return [ASTRONAUT.read_bytes(), small, mirrored, CAT.read_bytes()]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- processes -------------------------------------------------------------------------
@dataclass
class Env:
    gateway: Gateway
    models: Path
    data: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.data / DB_NAME, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def counts(self) -> dict[str, int]:
        with self.db() as conn:
            return dict(conn.execute("SELECT status, COUNT(*) FROM batch_items GROUP BY status").fetchall())

    def batch_cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "--model-dir",
            str(self.models),
            "--data-dir",
            str(self.data),
            "batch",
            *args,
        ]


def role_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    return env | overrides


@contextmanager
def batch_role(env: Env, log_name: str, **settings: str) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent batch`` (scheduled mode) as a real process, listening on its doorbell."""
    log = env.data / f"{log_name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            env.batch_cmd(), stdout=fh, stderr=subprocess.STDOUT, env=role_env(**settings), cwd=ROOT
        )
    try:
        bell = env.data / "batch" / "doorbell" / f"batch-{proc.pid}.sock"
        wait_for(lambda: bell.exists() or proc.poll() is not None, 30, "the batch role's doorbell")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("batch")
    models = copy_models(tmp / "models", ["iris", "face"])
    with run_gateway(models, tmp / "data") as gw:
        yield Env(gw, models, tmp / "data")


@pytest.fixture
def env(module_env: Env) -> Env:
    """The shared gateway with an empty batch (tests run one after another)."""
    with module_env.db() as conn:
        for table in ("batch_items", "results", "outbox"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM counters WHERE name LIKE 'batch_run_%'")  # no request left over
    return module_env


@pytest.fixture(scope="module")
def engine(module_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The same models, in this process: the reference answers."""
    eng = Engine(ModelStore(module_env.models, tmp_path_factory.mktemp("ref") / "state.json"))
    yield eng
    eng.close()


def register(env: Env, body: object = None, **kwargs: object) -> list[str]:
    r = httpx.post(f"{env.url}/batch/items", json=body, timeout=30, **kwargs)
    assert r.status_code == 201, r.text
    return list(r.json()["ids"])


def all_items(env: Env, status: str | None = None) -> list[dict]:
    params = {"limit": 1000} | ({"status": status} if status else {})
    r = httpx.get(f"{env.url}/batch/items", params=params)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["total"] == len(doc["items"])
    return list(doc["items"])


# -- over HTTP, with real role processes ------------------------------------------------
def test_register_over_http_then_batch_now_predicts_everything(env: Env, engine: Engine) -> None:
    rows = iris_rows(21)
    images = face_images()
    ids: dict[str, bytes | list[float]] = {}
    ids |= dict(zip(register(env, {"model": "iris", "data": rows[0]}), [rows[0]], strict=True))  # one row
    ids |= dict(zip(register(env, {"model": "iris", "data": rows[1:18]}), rows[1:18], strict=True))
    items_form = {
        "model": "iris",
        "items": [{"data": r} for r in rows[18:20]] + [{"inputs": {"float_input": rows[20]}}],
    }
    ids |= dict(zip(register(env, items_form), rows[18:], strict=True))
    ids |= dict(
        zip(register(env, {"model": "face", "images": [b64(i) for i in images[:2]]}), images[:2], strict=True)
    )
    files = [
        ("files", ("mirrored.jpg", images[2], "image/jpeg")),
        ("files", ("cat.jpg", images[3], "image/jpeg")),
    ]
    ids |= dict(zip(register(env, data={"model": "face"}, files=files), images[2:], strict=True))
    r = httpx.post(
        f"{env.url}/batch/items?model=face", content=images[1], headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 201, r.text
    ids[r.json()["ids"][0]] = images[1]
    assert len(ids) == 26

    assert {i["id"] for i in all_items(env, "pending")} == set(ids)
    assert len(all_items(env, "unpredicted")) == 26
    assert all_items(env, "done") == []
    assert httpx.get(f"{env.url}/batch").json()["counts"] == {
        "pending": 26,
        "running": 0,
        "done": 0,
        "failed": 0,
    }

    run = subprocess.run(
        env.batch_cmd("--now", "--progress"), capture_output=True, env=role_env(), cwd=ROOT, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    assert "26 done, 0 failed" in run.stdout.decode()
    assert "batch 26/26 100%" in run.stderr.decode()  # the bar, as plain lines: stderr is not a TTY here

    done = all_items(env, "predicted")
    assert {i["id"] for i in done} == set(ids) and all_items(env, "pending") == []
    for item in done:
        assert item["status"] == "done" and item["version"] == "1" and item["attempts"] == 1
        assert item["result_id"] == item["id"]
        source = ids[item["id"]]
        if isinstance(source, bytes):
            want = engine.predict("face", images=[source]).results[0]
            assert [round(b["score"], 2) for b in item["result"]["boxes"]] == [
                round(b["score"], 2) for b in want["boxes"]
            ]
            for got_box, want_box in zip(item["result"]["boxes"], want["boxes"], strict=True):
                assert got_box["xmin"] == pytest.approx(want_box["xmin"], abs=0.5)
                assert got_box["ymax"] == pytest.approx(want_box["ymax"], abs=0.5)
        else:
            want = engine.predict("iris", {"float_input": [source]}).results[0]
            assert item["result"]["label"] == want["label"]
            np.testing.assert_allclose(item["result"]["probabilities"], want["probabilities"], atol=1e-5)
    faces = [i for i in done if i["model"] == "face"]
    assert sum(len(i["result"]["boxes"]) > 0 for i in faces) == 4  # astronauts; the cat has none
    one = httpx.get(f"{env.url}/batch/items/{done[0]['id']}").json()
    assert one == done[0]
    with env.db() as conn:  # one result and one outbox entry per item, with the version
        results = conn.execute("SELECT id, ref, source, version FROM results").fetchall()
        assert sorted(r["id"] for r in results) == sorted(ids)
        assert {(r["source"], r["version"]) for r in results} == {("batch", "1")}
        assert all(r["id"] == r["ref"] for r in results)
        assert conn.execute("SELECT COUNT(DISTINCT id) FROM outbox").fetchone()[0] == 26


def test_bad_items_are_refused_and_nothing_is_stored(env: Env) -> None:
    url = f"{env.url}/batch/items"
    rows = iris_rows(3)
    bad_shape = {"model": "iris", "items": [{"data": rows[0]}, {"data": rows[1]}, {"data": [1.0, 2.0]}]}
    cases: list[tuple[dict[str, object], int, str]] = [
        (bad_shape, 422, "items[2]"),
        ({"model": "iris", "items": [{"data": [rows[0], rows[1]]}]}, 422, "one sample"),
        (
            {"model": "iris", "items": [{"data": rows[0]}, {"image": "%%%"}]},
            422,
            "items[1].image is not valid base64",
        ),
        (
            {"model": "face", "images": [b64(ASTRONAUT.read_bytes()), b64(b"not an image at all")]},
            422,
            "images[1]",
        ),
        ({"model": "iris", "images": [b64(ASTRONAUT.read_bytes())]}, 422, "takes tensors, not images"),
        ({"model": "nope", "data": rows}, 404, "no model named 'nope'"),
        ({"data": rows}, 422, "name the model"),
        ({"model": "iris"}, 422, "send exactly one of"),
        ({"model": "iris", "data": rows, "images": []}, 422, "send exactly one of"),
        ({"model": "iris", "items": []}, 422, "non-empty list"),
    ]
    for body, status, message in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert message in r.json()["error"], r.text
    npy = io.BytesIO()
    np.save(npy, np.array([rows[0], [1.0, np.nan, 2.0, 3.0]], dtype=np.float32))
    r = httpx.post(f"{url}?model=iris", content=npy.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 422 and "NaN" in r.json()["error"], r.text
    files = [
        ("files", ("ok.png", ASTRONAUT.read_bytes(), "image/png")),
        ("files", ("bad.jpg", b"\xff\xd8", "image/jpeg")),
    ]
    r = httpx.post(url, data={"model": "face"}, files=files)
    assert r.status_code == 422 and "files[1] (bad.jpg)" in r.json()["error"], r.text
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert httpx.get(f"{env.url}/batch/items", params={"status": "later"}).status_code == 422
    assert httpx.get(f"{env.url}/batch/items/nope").status_code == 404
    assert env.counts() == {}  # nothing stored, not even the good items of a bad request


def test_idempotency_key_stores_a_retried_request_once(env: Env) -> None:
    body = {"model": "iris", "data": iris_rows(5)}
    headers = {"Idempotency-Key": "upload-42"}
    first = httpx.post(f"{env.url}/batch/items", json=body, headers=headers)
    again = httpx.post(f"{env.url}/batch/items", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["ids"] == again.json()["ids"] and again.json()["replayed"] is True
    other = httpx.post(
        f"{env.url}/batch/items", json={"model": "iris", "data": iris_rows(5, seed=1)}, headers=headers
    )
    assert other.status_code == 409
    assert env.counts() == {"pending": 5}


def test_interval_role_picks_items_up_without_a_trigger(env: Env) -> None:
    with batch_role(env, "interval", EDGE_BATCH__INTERVAL_S="0.5") as proc:
        ids = register(env, {"model": "iris", "data": iris_rows(10)})
        wait_for(lambda: env.counts() == {"done": 10}, 15, "the interval run")
        assert {i["id"] for i in all_items(env, "done")} == set(ids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_run_requested_while_no_role_listens_runs_when_the_role_starts(env: Env) -> None:
    register(env, {"model": "iris", "data": iris_rows(5)})
    nobody = httpx.post(f"{env.url}/batch/run")
    assert nobody.status_code == 202 and nobody.json()["listeners"] == 0
    assert "the request is kept" in nobody.json()["warning"]
    with batch_role(env, "late", EDGE_BATCH__INTERVAL_S="3600") as proc:  # next scheduled run: 1 h
        wait_for(lambda: env.counts() == {"done": 5}, 15, "the requested run, at the role's start")
        register(env, {"model": "iris", "data": iris_rows(3, seed=2)})
        time.sleep(0.5)
        assert env.counts() == {"done": 5, "pending": 3}  # the request was answered once, not again
        assert proc.poll() is None


def test_run_trigger_wakes_a_sleeping_role_at_once(env: Env) -> None:
    register(env, {"model": "iris", "data": iris_rows(5)})
    with batch_role(env, "trigger", EDGE_BATCH__INTERVAL_S="3600") as proc:
        time.sleep(0.3)
        assert env.counts() == {"pending": 5}  # asleep: the next scheduled run is an hour away
        t0 = time.monotonic()
        r = httpx.post(f"{env.url}/batch/run")
        assert r.status_code == 202 and r.json() == {"pending": 5, "listeners": 1}
        wait_for(lambda: env.counts() == {"done": 5}, 10, "the triggered run")
        assert time.monotonic() - t0 < 3.0
        register(env, {"model": "iris", "data": iris_rows(3, seed=2)})  # rung again: runs again
        httpx.post(f"{env.url}/batch/run")
        wait_for(lambda: env.counts() == {"done": 8}, 10, "the second triggered run")
        assert proc.poll() is None


MANY = 3000


def test_kill_9_mid_run_then_restart_completes_every_item_exactly_once(env: Env) -> None:
    ids = set(register(env, {"model": "iris", "data": iris_rows(MANY)}))
    slow = {"EDGE_BATCH__INTERVAL_S": "3600", "EDGE_BATCH__CHUNK": "8", "EDGE_BATCH__PARALLELISM": "2"}
    with batch_role(env, "killed", **slow) as proc:
        httpx.post(f"{env.url}/batch/run")
        wait_for(lambda: env.counts().get("done", 0) >= 200, 20, "the run to get going")
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: its pid is gone, as after a crash under a supervisor
    at_kill = env.counts()
    assert at_kill.get("done", 0) < MANY and at_kill.get("running", 0) > 0, at_kill  # killed mid-run

    with batch_role(env, "restarted", **slow):  # no trigger: it resumes the interrupted run itself
        wait_for(lambda: env.counts() == {"done": MANY}, 30, "the resumed run")
    log = (env.data / "restarted.log").read_text()
    assert "resuming a run interrupted" in log

    with env.db() as conn:
        items = conn.execute("SELECT id, result_id, attempts FROM batch_items").fetchall()
        assert {r["id"] for r in items} == ids and all(r["result_id"] == r["id"] for r in items)
        assert {r["attempts"] for r in items} <= {1, 2}
        assert sum(r["attempts"] == 2 for r in items) == at_kill["running"]
        refs = [r[0] for r in conn.execute("SELECT ref FROM results WHERE source = 'batch'")]
        assert len(refs) == MANY and set(refs) == ids  # exactly one result per item
        outbox = [r[0] for r in conn.execute("SELECT id FROM outbox")]
        assert len(outbox) == MANY and set(outbox) == ids  # and one outbox entry each


def test_sigterm_finishes_the_chunks_in_flight_then_exits(env: Env) -> None:
    register(env, {"model": "iris", "data": iris_rows(MANY)})
    with batch_role(env, "stopped", EDGE_BATCH__INTERVAL_S="3600", EDGE_BATCH__CHUNK="8") as proc:
        httpx.post(f"{env.url}/batch/run")
        wait_for(lambda: env.counts().get("done", 0) >= 200, 20, "the run to get going")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    counts = env.counts()
    assert "running" not in counts and counts["done"] < MANY, counts  # nothing left half-done
    run = subprocess.run(env.batch_cmd("--now"), capture_output=True, env=role_env(), cwd=ROOT, timeout=60)
    assert run.returncode == 0 and env.counts() == {"done": MANY}


def test_invalid_cron_stops_the_role_with_a_config_error(env: Env) -> None:
    run = subprocess.run(
        env.batch_cmd(),
        capture_output=True,
        env=role_env(EDGE_BATCH__CRON="61 * * * *"),
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 3
    assert "batch.cron: minute field '61' is not valid" in run.stderr.decode()
    assert "values 0-59" in run.stderr.decode()


def run_role_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    n_items: int,
    while_loading: Callable[[Path], None] = lambda data: None,
    once_serving: Callable[[Path], None] = lambda data: None,
) -> tuple[dict[str, int], float]:
    """``edge-agent batch`` (interval 1 h) in this process, so that something can happen exactly
    while its models load or once it sleeps; stopped when its items are done or after 20 s.
    Returns the item counts and the seconds it took."""
    from edge_agent import config as config_mod
    from edge_agent.workers import batch as role

    cfg = config_mod.AgentConfig(
        model_dir=copy_models(tmp_path / "models", ["iris"]),
        data_dir=tmp_path / "data",
        batch=config_mod.BatchConfig(interval_s=3600),
    )
    storage = Storage.in_dir(cfg.data_dir)
    items = BatchItems(storage)
    items.register("iris", iris_payloads(n_items))
    real_build_engine, real_serve = role.build_engine, role.serve
    wake_r, wake_w = os.pipe()

    def build_engine(config: config_mod.AgentConfig) -> Engine:
        while_loading(config.data_dir)
        return real_build_engine(config)

    def serve(
        runner: role.BatchRunner,
        schedule: Any,
        listener: Any,
        stop: threading.Event,
        wake_fd: int,
        progress: Any = None,
    ) -> None:
        def stop_when_done() -> None:
            deadline = time.monotonic() + 20
            while items.counts()["done"] < n_items and time.monotonic() < deadline:
                time.sleep(0.02)
            stop.set()
            os.write(wake_w, b"!")

        threading.Thread(target=stop_when_done, daemon=True).start()
        once_serving(cfg.data_dir)
        real_serve(runner, schedule, listener, stop, wake_r, progress)

    monkeypatch.setattr(role, "build_engine", build_engine)
    monkeypatch.setattr(role, "serve", serve)
    try:
        t0 = time.monotonic()
        assert role.run(cfg, argparse.Namespace(now=False, progress=False)) == 0
        return items.counts(), time.monotonic() - t0
    finally:
        os.close(wake_r)
        os.close(wake_w)
        storage.close()


def test_a_ring_while_the_models_load_is_kept_for_the_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ring while the role loads its models (seconds on a Pi) is not lost until the next
    scheduled run, an hour away: the role binds its doorbell before it loads them."""
    rung: list[int] = []

    def ring(data: Path) -> None:  # the doorbell half of POST /batch/run, without its record
        bell = batch_doorbell(data)
        rung.append(bell.ring())
        bell.close()

    counts, took = run_role_in_process(tmp_path, monkeypatch, 6, while_loading=ring)
    assert rung == [1]  # the role was listening while its models loaded
    assert counts == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    assert took < 15


def test_a_request_whose_ring_was_lost_runs_at_the_next_wake_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doorbell is a hint, the database the truth: a recorded request whose ring never came
    runs when the role next wakes to look at the clock (every 30 s; 0.2 s here)."""
    from edge_agent.workers import batch as role

    monkeypatch.setattr(role, "MAX_SLEEP_S", 0.2)

    def record(data: Path) -> None:  # the record half of POST /batch/run, without its ring
        storage = Storage.in_dir(data)
        storage.write(BatchItems(storage).request_run)
        storage.close()

    def record_once_asleep(data: Path) -> None:  # after the role's look at start-up
        threading.Timer(0.5, record, (data,)).start()

    counts, took = run_role_in_process(tmp_path, monkeypatch, 4, once_serving=record_once_asleep)
    assert counts == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    assert took < 15


# -- the item store and the runner, in this process --------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Engine, Storage, Path]]:
    models = copy_models(tmp_path / "models", ["iris"])
    eng = Engine(ModelStore(models, tmp_path / "state.json"))
    storage = Storage.in_dir(tmp_path / "data")
    yield eng, storage, models
    eng.close()
    storage.close()


def iris_payloads(n: int) -> list[tuple[PayloadKind, bytes]]:
    rows = np.asarray(iris_rows(n), dtype=np.float32)
    return [("tensors", p) for p in encode_rows({"float_input": rows})]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_completion_needs_the_lease(local: tuple[Engine, Storage, Path]) -> None:
    _, storage, _ = local
    items = BatchItems(storage)
    (item_id,), _ = items.register("iris", iris_payloads(1))
    assert len(items.claim("A", "run-a", 10, lease_s=-1)) == 1  # a lease that has already expired
    assert items.release_abandoned(MAX_ATTEMPTS) == 1
    assert [c.id for c in items.claim("B", "run-b", 10, lease_s=60)] == [item_id]
    answer = Outcome(item_id, "iris", "1", {"label": "setosa"})
    late = items.complete("A", [answer], MAX_ATTEMPTS)
    assert (late.done, late.lost) == (0, 1)  # A lost its lease: its answer is not recorded
    assert items.complete("B", [answer], MAX_ATTEMPTS).done == 1
    assert items.complete("B", [answer], MAX_ATTEMPTS).lost == 1  # a second completion is refused
    assert len(storage.results(source="batch")) == 1 and storage.outbox_depth() == 1
    assert items.get(item_id).status == "done" and items.get(item_id).attempts == 2


def test_leases_of_a_dead_local_process_are_released_at_once(local: tuple[Engine, Storage, Path]) -> None:
    _, storage, _ = local
    items = BatchItems(storage)
    items.register("iris", iris_payloads(4))
    host = socket.gethostname()
    items.claim(f"{host}:{dead_pid()}:0badc0de", "r1", 1, lease_s=3600)
    items.claim(f"{host}:{os.getppid()}:1234abcd", "r2", 1, lease_s=3600)  # alive: keeps its lease
    items.claim(f"elsewhere:{dead_pid()}:1234abcd", "r3", 1, lease_s=3600)  # another host: wait it out
    items.claim(f"{host}:{os.getpid()}:00000000", "r4", 1, lease_s=3600)  # our pid, older process
    assert owner_id() != f"{host}:{os.getpid()}:00000000"
    assert items.release_abandoned(MAX_ATTEMPTS) == 2
    assert items.counts() == {"pending": 2, "running": 2, "done": 0, "failed": 0}


def test_an_item_abandoned_too_often_is_parked_as_failed(local: tuple[Engine, Storage, Path]) -> None:
    _, storage, _ = local
    items = BatchItems(storage)
    (item_id,), _ = items.register("iris", iris_payloads(1))
    for i in range(MAX_ATTEMPTS):
        assert len(items.claim("crashing", f"run-{i}", 1, lease_s=-1)) == 1
        items.release_abandoned(MAX_ATTEMPTS)
    item = items.get(item_id)
    assert item.status == "failed" and item.error is not None and "abandoned 3 times" in item.error


def test_a_bad_item_fails_alone_and_transient_failures_are_retried_a_bounded_number_of_times(
    local: tuple[Engine, Storage, Path],
) -> None:
    engine, storage, _ = local
    items = BatchItems(storage)
    good, _ = items.register("iris", iris_payloads(5))
    (bad,), _ = items.register("iris", [("tensors", b'{"float_input": [1.0, 2.0]}')])
    (garbage,), _ = items.register("iris", [("tensors", b"\x00\x01")])
    (gone,), _ = items.register("iris_gone", iris_payloads(1))
    runner = BatchRunner(engine, storage, RunnerOptions(parallelism=2, chunk=4))
    stats = runner.run_pending()
    assert (stats.done, stats.failed, stats.retried) == (5, 2, 1)
    assert all(items.get(i).status == "done" for i in good)
    assert "shape" in (items.get(bad).error or "") and items.get(bad).status == "failed"
    assert "unreadable" in (items.get(garbage).error or "")
    assert items.get(gone).status == "pending" and "no model named" in (items.get(gone).error or "")
    for _ in range(MAX_ATTEMPTS - 1):  # a run tries an item once; the next runs try again
        runner.run_pending()
    assert items.get(gone).status == "failed" and items.get(gone).attempts == MAX_ATTEMPTS
    assert runner.run_pending().claimed == 0


def test_run_pending_reports_throughput_and_follows_activations(local: tuple[Engine, Storage, Path]) -> None:
    engine, storage, models = local
    items = BatchItems(storage)
    items.register("iris", iris_payloads(300))
    stream = io.StringIO()
    stats = BatchRunner(engine, storage, RunnerOptions(parallelism=2, chunk=32)).run_pending(
        ProgressBar(stream)
    )
    assert (stats.pending, stats.claimed, stats.done) == (300, 300, 300)
    assert stats.elapsed_s > 0 and stats.items_per_s > 0
    assert stream.getvalue().splitlines()[-1].startswith("batch 300/300 100%")
    # a version activated by another process (the gateway) is what the next run answers with
    shutil.copytree(models / "iris" / "1", models / "iris" / "2")
    manifest = models / "iris" / "2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "1"', '"version": "2"'))
    other_process = ModelStore(models, engine.store.state_path)
    other_process.set_active("iris", "1")
    runner = BatchRunner(engine, storage, RunnerOptions())
    ids, _ = items.register("iris", iris_payloads(2))
    runner.run_pending()
    assert {items.get(i).version for i in ids} == {"1"}
    other_process.set_active("iris", "2")
    ids, _ = items.register("iris", iris_payloads(2))
    runner.run_pending()
    assert {items.get(i).version for i in ids} == {"2"}


def test_progress_bar_on_a_terminal_redraws_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = ProgressBar(stream, width=10)
    bar(0, 4)
    time.sleep(0.11)
    bar(2, 4)
    bar(4, 4)
    out = stream.getvalue()
    assert out.count("\r") == 3 and out.endswith("\n") and "[##########] 4/4 100%" in out


def test_stored_samples_read_back_exactly() -> None:
    f32 = np.finfo(np.float32)
    edge = np.array([[f32.max, f32.tiny, -0.0, 0.1]], dtype=np.float32)
    back = decode_row(encode_rows({"x": edge})[0])["x"]
    assert np.array_equal(back.astype(np.float32), edge[0]) and np.all(np.abs(back) <= f32.max)
    ints = np.array([[np.iinfo(np.int64).max, -1]], dtype=np.int64)
    assert np.array_equal(decode_row(encode_rows({"i": ints})[0])["i"], ints[0])


def test_run_requests_are_counted_answered_once_and_a_failed_read_is_not_a_crash(
    local: tuple[Engine, Storage, Path],
) -> None:
    engine, storage, _ = local
    items = BatchItems(storage)
    assert not items.run_requested()
    storage.write(items.request_run)
    storage.write(items.request_run)
    assert items.run_requested()
    items.register("iris", iris_payloads(2))
    runner = BatchRunner(engine, storage, RunnerOptions())
    assert runner.run_pending().done == 2
    assert not items.run_requested()  # one run answers every request made before it
    storage.write(items.request_run)
    assert items.run_requested()
    storage.conn.execute("ALTER TABLE counters RENAME TO counters_gone")  # the read fails now
    assert not items.run_requested()  # logged; the schedule and the ring still start runs
