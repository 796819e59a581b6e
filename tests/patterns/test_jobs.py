"""The job queue and the doorbell, in process, over a real SQLite file."""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.errors import InvalidInput
from edge_agent.storage import Storage
from edge_agent.workers.doorbell import Doorbell, DoorbellError
from edge_agent.workers.jobs import (
    RETRY_BASE_S,
    JobNotFound,
    JobQueue,
    idempotent_id,
    pack_images,
    pack_tensors,
    unpack,
)
from edge_agent.workers.worker import Worker, run
from tests.conftest import copy_models

X = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 64


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage.in_dir(tmp_path)


def make_queue(storage: Storage, lease_s: float = 30.0, max_attempts: int = 3) -> JobQueue:
    return JobQueue(storage, lease_s=lease_s, max_attempts=max_attempts)


def add(queue: JobQueue, **kw: Any) -> str:
    return queue.enqueue(
        model="digits", version="1", kind="tensors", payload=pack_tensors({"input": X}), **kw
    )


def rows(storage: Storage, table: str, column: str, value: str) -> int:
    return int(
        storage.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (value,)).fetchone()[0]
    )


def test_claim_complete_records_result_and_outbox_once(storage: Storage) -> None:
    q = make_queue(storage)
    jid = add(q)
    job = q.get(jid)
    assert (job.status, job.attempts, job.started, job.finished) == ("queued", 0, None, None)
    claimed = q.claim("w1")
    assert claimed is not None and claimed.id == jid
    assert (claimed.status, claimed.attempts, claimed.lease_owner) == ("running", 1, "w1#1")
    assert claimed.lease_expires is not None and claimed.lease_expires > time.time() + 29
    assert q.claim("w2") is None  # nothing else to take
    assert q.complete(claimed, {"answer": 42}, "1")
    assert not q.complete(claimed, {"answer": 42}, "1")  # a second completion records nothing
    done = q.get(jid)
    assert done.status == "done" and done.result_id == jid and done.worker == "w1"
    assert done.started is not None and done.finished is not None
    assert done.created <= done.started <= done.finished
    assert q.result_body(done) == {"answer": 42}
    assert rows(storage, "results", "id", jid) == 1
    assert rows(storage, "outbox", "id", jid) == 1
    assert storage.result(jid).source == "async"


def test_concurrent_claims_never_hand_out_a_job_twice(tmp_path: Path) -> None:
    storage = Storage.in_dir(tmp_path)
    q = make_queue(storage)
    ids = {add(q) for _ in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = JobQueue(Storage.in_dir(tmp_path))  # its own connection, as another process has
        while (job := mine.claim(name)) is not None:
            assert mine.complete(job, {"by": name}, "1")
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    assert storage.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 60


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_record(storage: Storage) -> None:
    q = make_queue(storage, lease_s=0.05)
    jid = add(q)
    first = q.claim("dead")
    assert first is not None
    time.sleep(0.08)
    second = q.claim("alive")
    assert second is not None and second.id == jid
    assert (second.attempts, second.lease_owner) == (2, "alive#2")
    assert not q.complete(first, {"by": "dead"}, "1")  # the zombie's result is refused
    assert q.fail(first, "zombie error") is None
    assert q.complete(second, {"by": "alive"}, "1")
    assert q.result_body(q.get(jid)) == {"by": "alive"}
    assert rows(storage, "results", "id", jid) == 1


def test_a_late_finisher_whose_lease_was_not_taken_still_records(storage: Storage) -> None:
    q = make_queue(storage, lease_s=0.05)
    jid = add(q)
    slow = q.claim("slow")
    assert slow is not None
    time.sleep(0.08)
    q.requeue_expired()
    assert q.get(jid).status == "queued"
    assert q.complete(slow, {"by": "slow"}, "1")  # nobody else took it: the work is kept
    assert q.claim("other") is None
    assert rows(storage, "results", "id", jid) == 1


def test_lease_expiring_on_the_last_attempt_fails_the_job(storage: Storage) -> None:
    q = make_queue(storage, lease_s=0.02, max_attempts=2)
    jid = add(q)
    for _ in range(2):
        assert q.claim("crashy") is not None
        time.sleep(0.04)
    assert q.claim("next") is None
    job = q.get(jid)
    assert job.status == "failed" and job.attempts == 2
    assert "lease expired" in (job.error or "")


def test_failures_are_retried_with_backoff_then_failed(storage: Storage) -> None:
    q = make_queue(storage, max_attempts=3)
    jid = add(q)
    for attempt in (1, 2, 3):
        job = q.claim("w")
        assert job is not None and job.attempts == attempt
        status = q.fail(job, f"boom {attempt}")
        if attempt < 3:
            assert status == "queued"
            again = q.get(jid)
            assert again.status == "queued" and again.error == f"boom {attempt}"
            assert q.claim("w") is None  # not before its retry time...
            deadline = q.next_deadline()
            assert deadline is not None
            assert deadline - time.time() <= RETRY_BASE_S * 2 ** (attempt - 1)  # ...a known deadline
            time.sleep(max(0.0, deadline - time.time()) + 0.01)
    assert status == "failed"
    job = q.get(jid)
    assert (job.status, job.attempts, job.error) == ("failed", 3, "boom 3")
    assert job.finished is not None and q.result_body(job) is None
    assert rows(storage, "results", "id", jid) == 0


def test_permanent_failure_is_not_retried(storage: Storage) -> None:
    q = make_queue(storage)
    jid = add(q)
    job = q.claim("w")
    assert job is not None
    assert q.fail(job, "bad input", retry=False) == "failed"
    assert q.get(jid).attempts == 1
    assert q.get(jid, payload=True).payload == job.payload != b""  # a failed job keeps its input


def test_unknown_job_is_not_found(storage: Storage) -> None:
    with pytest.raises(JobNotFound) as err:
        make_queue(storage).get("nope")
    assert err.value.status == 404


def test_idempotent_enqueue_keeps_one_job(storage: Storage) -> None:
    q = make_queue(storage)
    jid = idempotent_id("client-request-1")
    assert add(q, job_id=jid) == jid
    assert add(q, job_id=jid) == jid
    assert rows(storage, "jobs", "id", jid) == 1
    assert q.counts() == {"queued": 1, "running": 0, "done": 0, "failed": 0}


def test_payloads_round_trip() -> None:
    tensors, images = unpack("tensors", pack_tensors({"input": X}))
    assert images is None and tensors is not None
    np.testing.assert_array_equal(tensors["input"], X)
    assert tensors["input"].dtype == np.float32
    imgs = [b"\x89PNG first", b"", b"third" * 1000] + [bytes([i]) for i in range(11)]
    assert unpack("images", pack_images(imgs)) == (None, imgs)
    with pytest.raises(InvalidInput):
        unpack("tensors", b"not an npz")


# -- doorbell ----------------------------------------------------------------------------------
def test_ring_wakes_a_listener_and_removes_stale_sockets(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path)
    with bell.listen("w1") as listener:
        t0 = time.monotonic()
        assert not listener.wait(0.05)  # nothing rung: times out
        assert time.monotonic() - t0 >= 0.04
        stale = bell.listen("w2")
        stale._sock.close()  # a worker killed with -9 leaves its socket file behind
        assert (bell.dir / "w2.sock").exists()
        assert bell.ring() == 1
        assert not (bell.dir / "w2.sock").exists()
        assert listener.wait(1.0)
        assert listener.drain() == 1
        assert not listener.wait(0)
    assert not (bell.dir / "w1.sock").exists()
    bell.close()


def test_a_live_worker_id_cannot_be_reused_but_a_dead_one_can(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path)
    live = bell.listen("same")
    with pytest.raises(DoorbellError, match="another live worker"):
        bell.listen("same")
    live._sock.close()  # died without cleaning up
    with bell.listen("same") as again:
        assert bell.ring() == 1
        assert again.wait(1.0)
    bell.close()


def test_doorbell_works_in_a_directory_with_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    bell = Doorbell(deep)
    assert len(str(bell.dir / "w.sock")) > 108
    with bell.listen("w") as listener:
        assert (bell.dir / "w.sock").exists()
        assert bell.ring() == 1
        assert listener.wait(1.0)
    assert not (bell.dir / "w.sock").exists()
    bell.close()


# -- the worker, in process ----------------------------------------------------------------------
def test_worker_once_drains_the_queue_and_exits(tmp_path: Path) -> None:
    config = AgentConfig(model_dir=copy_models(tmp_path / "models", ["digits"]), data_dir=tmp_path / "data")
    q = make_queue(Storage.in_dir(config.data_dir))
    ids = [add(q) for _ in range(3)]
    assert run(config, argparse.Namespace(id="once", once=True)) == 0
    assert [q.get(i).status for i in ids] == ["done"] * 3
    assert q.get(ids[0], payload=True).payload == b""  # the input is dropped once the result is kept


def test_worker_runs_jobs_and_fails_unreadable_payloads_without_retry(tmp_path: Path) -> None:
    config = AgentConfig(model_dir=copy_models(tmp_path / "models", ["digits"]), data_dir=tmp_path / "data")
    worker = Worker(config, "inproc")
    try:
        q = make_queue(worker.queue.storage)
        good = add(q)
        bad = q.enqueue(model="digits", version="1", kind="tensors", payload=b"garbage")
        assert worker.drain() == 2
        assert q.get(good).status == "done"
        body = q.result_body(q.get(good))
        assert body is not None and body["model"] == "digits" and len(body["results"]) == 1
        failed = q.get(bad)
        assert (failed.status, failed.attempts) == ("failed", 1)
        assert "unreadable" in (failed.error or "")
    finally:
        worker.close()


def test_schema_has_what_the_queue_needs(tmp_path: Path) -> None:
    """The queue relies on these columns of storage.MIGRATIONS (owned by storage.py)."""
    Storage.in_dir(tmp_path)
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    cols = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    assert {"lease_owner", "lease_expires", "attempts", "max_attempts", "link", "result_id"} <= cols


def test_payloads_are_compact_and_npz_payloads_of_older_agents_still_read() -> None:
    import io

    x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    blob = pack_tensors({"float_input": x})
    assert len(blob) < 100  # an .npz of the same array takes ~290 bytes
    old = io.BytesIO()
    np.savez(old, allow_pickle=False, float_input=x)
    for stored in (blob, old.getvalue()):
        tensors, images = unpack("tensors", stored)
        assert images is None and tensors is not None
        np.testing.assert_array_equal(tensors["float_input"], x)
    with pytest.raises(InvalidInput, match="unreadable"):
        unpack("tensors", blob[:-3])
