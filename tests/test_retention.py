"""Retention on a real SQLite file: delivered results, finished jobs and batch items go after
their age; undelivered results and unfinished work stay, however old."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_agent.clock import ClockTrust
from edge_agent.retention import DAY_S, Pruner, prune
from edge_agent.storage import Storage
from edge_agent.workers.batch_items import BatchItems
from edge_agent.workers.jobs import JobQueue, pack_tensors

PAYLOAD = pack_tensors({"x": np.zeros((1, 4), np.float32)})


def _results(st: Storage, n: int) -> list[str]:
    with st.transaction() as conn:
        return [st.record_result(conn, source="t", model="m", version="1", body={"i": i}) for i in range(n)]


def test_prune_keeps_undelivered_results_and_unfinished_work(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    old, delivered_old, recent = _results(st, 3), _results(st, 3), _results(st, 2)
    q = JobQueue(st)
    jobs = [q.enqueue(model="m", version="1", kind="tensors", payload=PAYLOAD) for _ in range(3)]
    done, failed = q.claim("w"), q.claim("w")
    assert done is not None and failed is not None
    q.complete(done, {"ok": True}, "1")
    q.fail(failed, "broken", retry=False)
    items, _ = BatchItems(st).register("m", [("tensors", PAYLOAD)] * 2)
    with st.transaction() as conn:
        ten_days_ago = time.time() - 10 * DAY_S
        marks = ",".join("?" * len(old + delivered_old))
        conn.execute(
            f"UPDATE results SET created = ? WHERE id IN ({marks})", (ten_days_ago, *old, *delivered_old)
        )
        conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * 3)})", delivered_old)  # acknowledged
        conn.execute(
            "UPDATE jobs SET created = ?, finished = ? WHERE finished IS NOT NULL", (ten_days_ago,) * 2
        )
        conn.execute("UPDATE jobs SET created = ? WHERE status = 'queued'", (ten_days_ago,))
        conn.execute(
            "UPDATE batch_items SET status = 'done', created = ?, finished = ? WHERE id = ?",
            (ten_days_ago, ten_days_ago, items[0]),
        )
        conn.execute("UPDATE batch_items SET created = ? WHERE id = ?", (ten_days_ago, items[1]))
    pruned = prune(st, 7 * DAY_S, chunk=2)  # chunk 2: several transactions per table
    assert (pruned.results, pruned.jobs, pruned.batch_items) == (3, 2, 1)
    left = {r[0] for r in st.conn.execute("SELECT id FROM results")}
    assert left == {*old, *recent, done.id}  # old but undelivered: kept; the job's result is recent
    assert {r[0] for r in st.conn.execute("SELECT id FROM jobs")} == {jobs[2]}  # the queued one
    assert {r[0] for r in st.conn.execute("SELECT id FROM batch_items")} == {items[1]}  # pending
    assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_nothing_is_pruned_while_the_clock_is_not_trusted(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    ids = _results(st, 2)
    with st.transaction() as conn:
        conn.execute("UPDATE results SET created = 0")
        conn.execute("DELETE FROM outbox")
    untrusted = ClockTrust(
        False, "test: before the build", time.time(), time.clock_gettime(time.CLOCK_BOOTTIME)
    )
    pruner = Pruner(Storage.in_dir(tmp_path), DAY_S, trust=lambda: untrusted)
    assert pruner.run_once() is None
    assert {r[0] for r in st.conn.execute("SELECT id FROM results")} == set(ids)
    trusted = ClockTrust(True, "test", time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))
    pruner.trust = lambda: trusted
    done = pruner.run_once()
    assert done is not None and done.results == 2
