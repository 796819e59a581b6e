"""Schemas 5 to 7 (SD-card wear): a device database made by the schema before them is upgraded
in one transaction, whatever moment the upgrade is killed at, and nothing is lost on the way:
every queued job is claimed once, every outbox entry is sent in order and deleted by its ack."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.sqlitefile import UserVersion, connect, migrate, sql_script
from edge_agent.storage import MIGRATIONS, OUTBOX_ROWS, Storage, envelope, pack_body, unpack_body
from edge_agent.sync.outbox import _delete_ids
from edge_agent.workers.jobs import JobQueue

OLD = 4  # the schema of the agent before this change


def old_database(path: Path, jobs: int = 30, results: int = 20) -> dict[str, list[str]]:
    """A database as the previous agent leaves it: queued, claimed, retried and done jobs, results
    with outbox entries (the body as JSON text), one envelope-only entry whose result is gone."""
    conn = connect(path, busy_timeout_s=5, page_size=1024)
    conn.execute("BEGIN IMMEDIATE")
    migrate(conn, [sql_script(s) for s in MIGRATIONS[:OLD]], UserVersion(conn))
    t = time.time()
    ids: dict[str, list[str]] = {"fresh": [], "retry": [], "done": [], "outbox": []}
    for i in range(jobs):
        jid, kind = f"{i:012x}{'a' * 20}", ("fresh", "retry", "done")[i % 3]
        status, owner = {"fresh": ("queued", None), "retry": ("queued", "w#1"), "done": ("done", "w#1")}[kind]
        conn.execute(
            "INSERT INTO jobs (id, model, payload_kind, payload, status, attempts, lease_owner, created) "
            "VALUES (?, 'iris', 'tensors', x'00', ?, ?, ?, ?)",
            (jid, status, 0 if owner is None else 1, owner, t + i),
        )
        ids[kind].append(jid)
    conn.execute(  # an entry of an agent older still: its envelope in the row, no result
        "INSERT INTO outbox (id, kind, body, created) VALUES ('gone', 'result', ?, ?)",
        (
            json.dumps(
                {"id": "gone", "source": "async", "model": "iris", "version": "1", "created": t, "body": {}}
            ),
            t,
        ),
    )
    ids["outbox"].append("gone")
    for i in range(results):
        rid = f"r{i:05d}"
        conn.execute(
            "INSERT INTO results (id, source, model, version, created, body) VALUES (?, 'async', 'iris', '1', ?, ?)",
            (rid, t + i, json.dumps({"i": i})),
        )
        conn.execute("INSERT INTO outbox (id, kind, body, created) VALUES (?, 'result', '', ?)", (rid, t + i))
        ids["outbox"].append(rid)
    conn.execute("COMMIT")
    conn.close()
    return ids


def test_a_database_of_the_previous_schema_is_upgraded_and_keeps_every_job_and_entry(tmp_path: Path) -> None:
    ids = old_database(tmp_path / "agent.sqlite3")
    st = Storage.in_dir(tmp_path)
    assert st.schema_version == len(MIGRATIONS)
    assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the outbox: same order, no index on id, no AUTOINCREMENT; seq is the result's rowid
    rows = st.conn.execute(f"{OUTBOX_ROWS} ORDER BY o.seq").fetchall()
    assert [r[1] for r in rows] == ids["outbox"]
    assert rows[0][0] < 0 and all(r[0] == r[9] for r in rows[1:])
    assert [envelope(r)["body"] for r in rows[1:]] == [{"i": i} for i in range(20)]  # type: ignore[index]
    sql = st.conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'outbox'").fetchone()[0]
    assert "AUTOINCREMENT" not in sql and "UNIQUE" not in sql
    assert st.conn.execute("SELECT COUNT(*) FROM sqlite_schema WHERE tbl_name = 'outbox'").fetchone()[0] == 1
    # acknowledgements delete through the results' id index, and the envelope-only entry by id
    with st.transaction() as conn:
        assert _delete_ids(conn, ["gone", "r00000", "r00001", "unknown"]) == 3
    assert st.outbox_depth() == 18
    # new results: their entries follow, body compressed, older bodies still read
    with st.transaction() as conn:
        new = st.record_result(conn, source="async", model="iris", version="1", body={"new": True})
    assert st.conn.execute("SELECT id FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()[0] == new
    assert isinstance(st.conn.execute("SELECT body FROM results WHERE id = ?", (new,)).fetchone()[0], bytes)
    assert st.result(new).body == {"new": True} and st.result("r00005").body == {"i": 5}
    # results: no index on created; listed newest first in the order recorded
    assert st.conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'results_by_created'").fetchone() is None
    assert [r.id for r in st.results(limit=3)] == [new, "r00019", "r00018"]
    # jobs: the never-claimed ones (found by rowid) and the retries (indexed) are all claimed once
    q = JobQueue(st, lease_s=60)
    claimed = [j.id for j in q.claim_many("w", 7)] + [j.id for j in q.claim_many("w", 100)]
    assert sorted(claimed) == sorted(ids["fresh"] + ids["retry"])
    assert claimed == sorted(claimed)  # oldest first (created order)
    assert q.claim_many("w", 100) == []
    jid = q.enqueue(model="iris", version=None, kind="tensors", payload=b"x")
    assert [j.id for j in JobQueue(st).claim_many("other", 10)] == [jid]  # a new process's cursor


def test_jobs_never_claimed_touch_no_status_index_page_and_are_found_by_every_worker(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    q1, q2, producer = JobQueue(st), JobQueue(st), JobQueue(st)
    first = [producer.enqueue(model="iris", version=None, kind="tensors", payload=b"x") for _ in range(5)]
    assert (
        st.conn.execute(
            "SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_status "
            "WHERE lease_owner IS NOT NULL AND status IN ('queued', 'running')"
        ).fetchone()[0]
        == 0
    )
    got = [j.id for j in q1.claim_many("a", 2)] + [j.id for j in q2.claim_many("b", 2)]
    later = [producer.enqueue(model="iris", version=None, kind="tensors", payload=b"x") for _ in range(3)]
    got += [j.id for j in q1.claim_many("a", 10)] + [j.id for j in q2.claim_many("b", 10)]
    assert sorted(got) == sorted(first + later) and len(got) == len(set(got))
    # a retry (claimed before) is found through the index
    job = q1.claim_many("a", 1) or [q1.get(first[0])]
    assert q1.fail(job[0], "boom", retry=True) == "queued"
    st.conn.execute("UPDATE jobs SET lease_expires = 0 WHERE id = ?", (first[0],))
    assert [j.id for j in q2.claim_many("b", 10)] == [first[0]]
    plan = " ".join(
        str(r[3])
        for r in st.conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE lease_owner IS NOT NULL "
            "AND status IN ('queued', 'running') AND status = 'queued' "
            "AND (lease_expires IS NULL OR lease_expires <= 1) ORDER BY created LIMIT 5"
        )
    )
    assert "jobs_by_status" in plan


def test_a_claim_that_rolls_back_leaves_its_jobs_to_be_found(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    q = JobQueue(st)
    ids = [q.enqueue(model="iris", version=None, kind="tensors", payload=b"x") for _ in range(3)]
    st.conn.execute(  # the claim's UPDATE fails, its transaction is rolled back
        "CREATE TEMP TRIGGER no_claim BEFORE UPDATE OF status ON jobs WHEN NEW.status = 'running' "
        "BEGIN SELECT RAISE(ABORT, 'injected'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        q.claim_many("w", 10)
    st.conn.execute("DROP TRIGGER no_claim")
    assert [j.id for j in q.claim_many("w", 10)] == ids


def test_bodies_are_compressed_and_json_text_still_reads() -> None:
    body = {"model": "iris", "results": [{"label": "setosa", "score": 0.97}] * 3}
    packed = pack_body(body)
    assert isinstance(packed, bytes) and len(packed) < len(json.dumps(body))
    assert unpack_body(packed) == body and unpack_body(json.dumps(body)) == body


_UPGRADE = """
import sys
from edge_agent.storage import Storage
Storage.in_dir(sys.argv[1])
"""


def kill_upgrade(data_dir: Path, delay_s: float) -> None:
    """Start the agent's storage (which upgrades the database) in a process, SIGKILL it after
    ``delay_s``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", _UPGRADE, str(data_dir)], env=env)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_an_upgrade_killed_at_any_moment_leaves_the_old_schema_or_the_new_one(tmp_path: Path) -> None:
    """SIGKILL the upgrade of a large database at spread-out moments; each time the file holds
    version 4 with every row or the new version with every row, never a mix."""
    seen: set[int] = set()
    for k, delay in enumerate((0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 2.0)):
        d = tmp_path / f"db{k}"
        d.mkdir()
        ids = old_database(d / "agent.sqlite3", jobs=3000, results=4000)
        kill_upgrade(d, delay)
        with sqlite3.connect(d / "agent.sqlite3") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert [r[0] for r in conn.execute("SELECT id FROM outbox ORDER BY seq")] == ids["outbox"]
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3000
            index = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'jobs_by_status'").fetchone()[0]
        assert version in (OLD, len(MIGRATIONS)), version
        assert ("lease_owner IS NOT NULL" in index) == (version == len(MIGRATIONS))
        seen.add(version)
        st = Storage.in_dir(d)  # and it upgrades on the next start
        assert st.schema_version == len(MIGRATIONS) and st.outbox_depth() == len(ids["outbox"])
        st.close()
    print("versions seen after the kills:", sorted(seen))
    assert seen, seen
