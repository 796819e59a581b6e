"""Asynchronous and sync-async patterns end to end: a real gateway process and
real worker processes started here, real HTTP, one shared SQLite file."""

from __future__ import annotations

import base64
import io
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.storage import DB_NAME
from tests.conftest import DATA, MODELS, ROOT, copy_models
from tests.helpers import flip_byte
from tests.serving.gateway_proc import Gateway, run_gateway

MODEL_NAMES = ["digits", "digits_int8", "face"]
DIGIT_PNG = (MODELS / "digits" / "1" / "samples" / "digit_4.png").read_bytes()
ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()
HELDOUT = np.load(DATA / "digits_heldout.npz")
X = (HELDOUT["images"].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)


@dataclass
class Env:
    gw: Gateway
    models: Path
    data: Path

    @property
    def db(self) -> Path:
        return self.data / DB_NAME


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("async")
    models = copy_models(tmp / "models", MODEL_NAMES)
    with run_gateway(models, tmp / "data") as gw:
        yield Env(gw, models, tmp / "data")


@pytest.fixture
def procs() -> Iterator[ExitStack]:
    """Every worker a test starts is stopped, even when the test fails."""
    with ExitStack() as stack:
        yield stack


@dataclass
class WorkerProc:
    id: str
    proc: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def _worker(models: Path, data: Path, worker_id: str, env: dict[str, str]) -> Iterator[WorkerProc]:
    log = data / f"worker-{worker_id}-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(models), "--data-dir", str(data)]
    cmd += ["worker", "--id", worker_id]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")} | env
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    w = WorkerProc(worker_id, proc, log)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in w.logs():
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{w.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in 30 s:\n{w.logs()}")
            time.sleep(0.02)
        yield w
    finally:
        w.stop()


def start_worker(
    procs: ExitStack,
    env: Env,
    worker_id: str,
    *,
    models: Path | None = None,
    settings: dict[str, str] | None = None,
) -> WorkerProc:
    return procs.enter_context(_worker(models or env.models, env.data, worker_id, settings or {}))


def submit(env: Env, model: str, **kw: Any) -> str:
    r = httpx.post(f"{env.gw.url}/async/{model}", timeout=30, **kw)
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["status"] == "queued" and doc["links"] == {"self": f"/jobs/{doc['job_id']}"}
    return str(doc["job_id"])


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def job(env: Env, jid: str) -> dict[str, Any]:
    r = httpx.get(f"{env.gw.url}/jobs/{jid}", timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def wait_final(env: Env, ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    docs: dict[str, dict[str, Any]] = {}
    while pending:
        for jid in sorted(pending):
            doc = job(env, jid)
            if doc["status"] in ("done", "failed"):
                docs[jid] = doc
                pending.discard(jid)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished in {timeout} s: {[job(env, j) for j in pending][:3]}")
        time.sleep(0.02)
    return docs


def db_rows(env: Env, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(env.db, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def assert_recorded_once(env: Env, ids: list[str]) -> None:
    marks = ",".join("?" * len(ids))
    for table in ("results", "outbox"):
        counts = dict(
            db_rows(env, f"SELECT id, COUNT(*) FROM {table} WHERE id IN ({marks}) GROUP BY id", tuple(ids))
        )
        assert counts == dict.fromkeys(ids, 1), f"{table}: {counts}"


def assert_same_answers(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["label"] for r in got] == [r["label"] for r in want]
    np.testing.assert_allclose(
        [r["probabilities"] for r in got], [r["probabilities"] for r in want], atol=1e-6
    )


def jpeg_face(size: int = 2400) -> bytes:
    """A large JPEG of the astronaut: slow enough to decode that a job can be caught mid-way."""
    img = cv2.imdecode(np.frombuffer(ASTRONAUT, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    ok, data = cv2.imencode(".jpg", cv2.resize(img, (size, size)), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def slow_face_body(n: int = 12) -> dict[str, Any]:
    return {"json": {"images": [base64.b64encode(jpeg_face()).decode()] * n}}


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


# -- tests ---------------------------------------------------------------------------------------
def test_twenty_jobs_end_to_end_match_the_engine(env: Env, procs: ExitStack, engine: Engine) -> None:
    ids, want = [], []
    for i in range(20):
        rows = X[i * 3 : i * 3 + 1 + i % 3]
        if i % 4 == 0:
            ids.append(
                submit(env, "digits", content=npy(rows), headers={"content-type": "application/x-npy"})
            )
        elif i % 4 == 1:
            ids.append(submit(env, "digits", json={"data": rows.tolist()}))
        elif i % 4 == 2:
            ids.append(submit(env, "digits_int8", json={"inputs": {"input": rows.tolist()}}))
        else:
            ids.append(submit(env, "digits", content=DIGIT_PNG, headers={"content-type": "image/png"}))
        model = "digits_int8" if i % 4 == 2 else "digits"
        want.append(
            engine.predict(model, images=[DIGIT_PNG])
            if i % 4 == 3
            else engine.predict(model, {"input": rows})
        )
    queued = job(env, ids[0])  # no worker yet: the jobs wait, durably
    assert (queued["status"], queued["attempts"], queued["started"], queued["result"]) == (
        "queued",
        0,
        None,
        None,
    )

    start_worker(procs, env, "e2e")
    docs = wait_final(env, ids)
    for jid, pred in zip(ids, want, strict=True):
        doc = docs[jid]
        assert doc["status"] == "done" and doc["error"] is None and doc["attempts"] == 1, doc
        assert doc["created"] <= doc["started"] <= doc["finished"]
        assert doc["worker"] == "e2e"
        assert doc["result"]["model"] == pred.model and doc["result"]["version"] == pred.version
        assert_same_answers(doc["result"]["results"], pred.results)
    assert_recorded_once(env, ids)
    sources = db_rows(env, "SELECT DISTINCT source FROM results WHERE id = ?", (ids[0],))
    assert sources == [("async",)]


def test_bad_requests_are_refused_before_queuing(env: Env) -> None:
    before = db_rows(env, "SELECT COUNT(*) FROM jobs")[0][0]
    url = env.gw.url
    bad = [
        httpx.post(f"{url}/async/digits", json={"data": [[1, 2, 3]]}),  # wrong shape
        httpx.post(f"{url}/async/digits", content=b"{not json"),
        httpx.post(
            f"{url}/async/digits", content=b"\x89PNG\r\n\x1a\nbroken", headers={"content-type": "image/png"}
        ),
        httpx.post(f"{url}/async/digits", json={"images": ["not base64!"]}),
        httpx.post(f"{url}/async/digits", content=b""),
        httpx.post(f"{url}/async/face", json={"data": [[1.0, 2.0]]}),
        httpx.post(
            f"{url}/async/digits", json={"data": X[:1].tolist()}, headers={"idempotency-key": "k" * 300}
        ),
    ]
    for r in bad:
        assert r.status_code == 422, r.text
        assert r.json()["error"]
    missing = httpx.post(f"{url}/async/no_such_model", json={"data": X[:1].tolist()})
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    wrong_version = httpx.post(f"{url}/async/digits?version=9", json={"data": X[:1].tolist()})
    assert wrong_version.status_code == 404
    assert db_rows(env, "SELECT COUNT(*) FROM jobs")[0][0] == before  # nothing was queued

    unknown = httpx.get(f"{url}/jobs/0123456789abcdef")
    assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
    assert httpx.get(f"{url}/sync-async/0123456789abcdef").status_code == 404


def test_idempotency_key_queues_once(env: Env) -> None:
    headers = {"idempotency-key": f"retry-{time.time_ns()}"}
    first = submit(env, "digits", json={"data": X[:1].tolist()}, headers=headers)
    again = httpx.post(f"{env.gw.url}/async/digits", json={"data": X[:1].tolist()}, headers=headers)
    assert again.status_code == 202 and again.json()["job_id"] == first
    assert db_rows(env, "SELECT COUNT(*) FROM jobs WHERE id = ?", (first,))[0][0] == 1


def test_idle_worker_uses_no_cpu_and_wakes_within_milliseconds(env: Env, procs: ExitStack) -> None:
    w = start_worker(procs, env, "latency")
    wait_final(env, [submit(env, "digits", json={"data": X[:1].tolist()})])  # model loaded, queue empty
    time.sleep(0.3)
    ticks0, switches0 = cpu_ticks(w.proc.pid), context_switches(w.proc.pid)
    time.sleep(2.0)
    idle_ticks = cpu_ticks(w.proc.pid) - ticks0
    idle_switches = context_switches(w.proc.pid) - switches0
    print(f"\nidle worker over 2 s: {idle_ticks} CPU ticks, {idle_switches} context switches")
    assert idle_ticks <= 1  # 10 ms of CPU in 2 s at most; polling would show here...
    assert idle_switches <= 2  # ...and here: a sleeping poller wakes up every period

    latencies = []
    for i in range(12):
        doc = wait_final(env, [submit(env, "digits", json={"data": X[i : i + 1].tolist()})])
        (d,) = doc.values()
        latencies.append((d["started"] - d["created"]) * 1000)
        time.sleep(0.05)  # the worker goes back to sleep in select()
    median = statistics.median(latencies)
    print(f"wake latency (job created -> started): median {median:.1f} ms, max {max(latencies):.1f} ms")
    assert median < 200
    t0 = time.monotonic()
    assert w.stop() == 0  # SIGTERM wakes an idle worker out of select() at once
    assert time.monotonic() - t0 < 2.0


def test_two_workers_share_the_work_and_no_job_runs_twice(env: Env, procs: ExitStack) -> None:
    start_worker(procs, env, "left")
    start_worker(procs, env, "right")
    body = {"json": {"images": [base64.b64encode(jpeg_face(1200)).decode()] * 2}}
    ids = [submit(env, "face", **body) for _ in range(12)]
    docs = wait_final(env, ids)
    assert all(d["status"] == "done" and d["attempts"] == 1 for d in docs.values())
    by_worker = {w: sum(d["worker"] == w for d in docs.values()) for w in ("left", "right")}
    assert by_worker["left"] > 0 and by_worker["right"] > 0, by_worker
    assert sum(by_worker.values()) == 12
    assert docs[ids[0]]["result"]["results"][0]["boxes"], "the astronaut's face was found"
    assert_recorded_once(env, ids)


def test_kill_9_mid_job_then_restart_completes_every_job_exactly_once(env: Env, procs: ExitStack) -> None:
    fast_lease = {"EDGE_WORKER__LEASE_S": "1"}
    body = slow_face_body(8)
    ids = [submit(env, "face", **body) for _ in range(5)]
    victim_job = None
    for _ in range(3):  # a job finishing in the instant before the kill is possible, if rare: retry
        victim = start_worker(procs, env, "victim", settings=fast_lease)
        deadline = time.monotonic() + 20
        while victim_job is None and time.monotonic() < deadline:
            running = db_rows(
                env, "SELECT id FROM jobs WHERE status = 'running' AND lease_owner LIKE 'victim#%'"
            )
            if running:
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                (candidate,) = running[0]
                state = db_rows(env, "SELECT status, lease_owner FROM jobs WHERE id = ?", (candidate,))
                if state[0][0] == "running":
                    victim_job = candidate  # killed mid-job: the job is held by a dead worker
                break
            time.sleep(0.005)
        if victim_job is not None:
            break
    assert victim_job is not None, "could not catch the worker mid-job"
    assert victim.proc.returncode == -signal.SIGKILL

    start_worker(procs, env, "victim", settings=fast_lease)  # same id: its stale socket is taken over
    docs = wait_final(env, ids, timeout=40)
    assert all(d["status"] == "done" for d in docs.values()), docs
    assert docs[victim_job]["attempts"] >= 2  # run again after the lease expired
    assert_recorded_once(env, ids)
    first = docs[ids[0]]["result"]["results"]
    assert all(d["result"]["results"] == first for d in docs.values())  # same input, same answer


def test_failing_job_is_retried_then_failed_with_the_error(
    env: Env, procs: ExitStack, tmp_path: Path
) -> None:
    broken = copy_models(tmp_path / "broken", ["digits"])
    flip_byte(broken / "digits" / "1" / "digits.onnx")  # the worker's copy rots after the job is queued
    jid = submit(env, "digits", json={"data": X[:1].tolist()})
    start_worker(procs, env, "rotten", models=broken)
    (doc,) = wait_final(env, [jid], timeout=20).values()
    assert doc["status"] == "failed" and doc["attempts"] == 3 and doc["max_attempts"] == 3, doc
    assert "sha256" in doc["error"], doc["error"]
    assert doc["result"] is None and doc["finished"] >= doc["started"]
    assert db_rows(env, "SELECT COUNT(*) FROM results WHERE id = ?", (jid,))[0][0] == 0


def test_sigterm_finishes_the_running_job_then_exits(env: Env, procs: ExitStack) -> None:
    w = start_worker(procs, env, "graceful")
    jid = submit(env, "face", **slow_face_body(8))
    deadline = time.monotonic() + 20
    while (running := job(env, jid))["status"] != "running":
        assert time.monotonic() < deadline, running
        time.sleep(0.005)
    w.proc.send_signal(signal.SIGTERM)
    assert running["attempts"] == 1 and running["worker"] == "graceful"
    assert running["started"] >= running["created"] and running["finished"] is None
    assert w.proc.wait(timeout=20) == 0, w.logs()
    doc = job(env, jid)
    assert doc["status"] == "done" and doc["attempts"] == 1, doc
    assert "stopped: 1 job(s) done" in w.logs()


def test_sync_async_fast_answer_now_accurate_answer_later_both_linked(
    env: Env, procs: ExitStack, engine: Engine
) -> None:
    r = httpx.post(f"{env.gw.url}/sync-async", content=DIGIT_PNG, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    doc = r.json()
    link = doc["link"]
    assert doc["fast"]["model"] == "digits_int8"
    assert_same_answers(doc["fast"]["results"], engine.predict("digits_int8", images=[DIGIT_PNG]).results)
    assert doc["accurate"] == {"job_id": link, "status": "queued", "links": {"self": f"/jobs/{link}"}}

    start_worker(procs, env, "accurate")
    (done,) = wait_final(env, [link]).values()
    assert done["status"] == "done" and done["model"] == "digits"
    assert done["links"]["sync_async"] == f"/sync-async/{link}"
    assert_same_answers(done["result"]["results"], engine.predict("digits", images=[DIGIT_PNG]).results)

    both = httpx.get(f"{env.gw.url}/sync-async/{link}").json()
    assert both["fast"]["result_id"] == doc["fast"]["result_id"]
    assert both["fast"]["results"] == doc["fast"]["results"]
    assert both["accurate"]["result"] == done["result"]
    fast_id = doc["fast"]["result_id"]
    stored = db_rows(
        env, "SELECT id, ref, model, source FROM results WHERE id IN (?, ?) ORDER BY model", (link, fast_id)
    )
    assert stored == [(link, fast_id, "digits", "sync-async"), (fast_id, link, "digits_int8", "sync-async")]
