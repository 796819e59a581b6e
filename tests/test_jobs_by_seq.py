"""Schema 9 (SD-card wear): a job queued now is found by its seq, so queueing it writes its row's
page only; jobs of the schema before (ids of 32 characters) and jobs queued with an
Idempotency-Key are found through a partial id index; results have no index on ref; the upgrade
keeps every job (same id, same rowid) and survives a SIGKILL at any moment. Result bodies are
compressed with a preset dictionary; bodies written before still read."""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from bench.walframes import commits
from edge_agent.sqlitefile import UserVersion, connect, migrate, sql_script
from edge_agent.storage import MIGRATIONS, Storage, StorageError, pack_body, unpack_body
from edge_agent.workers.jobs import JobNotFound, JobQueue, idempotent_id
from tests.test_storage_wear import kill_upgrade

PREVIOUS = 8  # the schema of the agent before this change
CORRECTION = ("boot-1:1-3", '{"offset_s": 12.5}', 1.0)


def previous_database(path: Path, jobs: int = 30, results: int = 20) -> dict[str, list[str]]:
    """A database as the previous agent leaves it: never-claimed, retried, running and done jobs
    (one queued with an Idempotency-Key), results with their outbox entries, a clock correction."""
    conn = connect(path, busy_timeout_s=5, page_size=1024)
    conn.execute("BEGIN IMMEDIATE")
    migrate(conn, [sql_script(s) for s in MIGRATIONS[:PREVIOUS]], UserVersion(conn))
    t = time.time() - 100
    ids: dict[str, list[str]] = {"fresh": [], "retry": [], "running": [], "done": [], "results": []}
    states = {
        "fresh": ("queued", None, None),
        "retry": ("queued", "w#1", t),
        "running": ("running", "w#1", t + 3600),
        "done": ("done", "w#1", None),
    }
    for i in range(jobs):
        kind = ("fresh", "retry", "running", "done")[i % 4]
        jid = idempotent_id("key-0") if i == 0 else f"{i:012x}{'b' * 20}"
        status, owner, expires = states[kind]
        conn.execute(
            "INSERT INTO jobs (id, model, payload_kind, payload, status, attempts, lease_owner, lease_expires, "
            "created) VALUES (?, 'iris', 'tensors', x'00', ?, ?, ?, ?, ?)",
            (jid, status, 0 if owner is None else 1, owner, expires, t + i),
        )
        ids[kind].append(jid)
    for i in range(results):
        rid = f"r{i:031d}"
        conn.execute(
            "INSERT INTO results (id, source, model, version, created, body) VALUES (?, 'async', 'iris', '1', ?, ?)",
            (rid, t + i, zlib.compress(json.dumps({"i": i}).encode())),
        )
        conn.execute(
            "INSERT INTO outbox (seq, id, kind, body, created) VALUES (last_insert_rowid(), ?, 'result', '', ?)",
            (rid, t + i),
        )
        ids["results"].append(rid)
    conn.execute("INSERT INTO clock_corrections (id, body, created) VALUES (?, ?, ?)", CORRECTION)
    conn.execute("COMMIT")
    conn.close()
    return ids


def _plan(st: Storage, sql: str, args: tuple[object, ...]) -> str:
    return " ".join(str(r[3]) for r in st.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_the_previous_schema_is_upgraded_and_every_job_keeps_its_id_and_place(tmp_path: Path) -> None:
    ids = previous_database(tmp_path / "agent.sqlite3")
    with sqlite3.connect(tmp_path / "agent.sqlite3") as raw:
        before = raw.execute("SELECT rowid, id FROM jobs ORDER BY rowid").fetchall()
    st = Storage.in_dir(tmp_path)
    assert st.schema_version == len(MIGRATIONS)
    assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [tuple(r) for r in st.conn.execute("SELECT seq, id FROM jobs ORDER BY seq")] == before
    assert [tuple(r) for r in st.conn.execute("SELECT id, body, created FROM clock_corrections")] == [
        CORRECTION
    ]
    assert st.conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'results_by_ref'").fetchone() is None
    q = JobQueue(st, lease_s=60)
    # every old id is found, through the id index
    for jid in [j for k in ("fresh", "retry", "running", "done") for j in ids[k]]:
        assert q.get(jid).id == jid
    assert "jobs_by_id" in _plan(st, "SELECT * FROM jobs WHERE id = ? AND length(id) = 32", (ids["done"][0],))
    # the status index holds the claimed jobs still queued or running, nothing done
    indexed = st.conn.execute(
        "SELECT id FROM jobs INDEXED BY jobs_by_status "
        "WHERE lease_owner IS NOT NULL AND status IN ('queued', 'running') ORDER BY created"
    ).fetchall()
    assert [r[0] for r in indexed] == sorted(ids["retry"] + ids["running"], key=lambda j: q.get(j).created)
    # an Idempotency-Key submitted before the upgrade still finds its job
    with st.transaction() as conn:
        assert (
            q.add(conn, model="iris", version=None, kind="tensors", payload=b"x", job_id=ids["fresh"][0])
            == (ids["fresh"][0])
        )
    assert st.conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 30
    # never-claimed and retried jobs are each claimed once, oldest first; a job done leaves the index
    claimed = q.claim_many("w", 100)
    assert sorted(j.id for j in claimed) == sorted(ids["fresh"] + ids["retry"])
    assert q.complete(claimed[0], {"ok": True}, "1")
    assert q.get(claimed[0].id).status == "done"
    assert (
        st.conn.execute(
            "SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_status "
            "WHERE lease_owner IS NOT NULL AND status IN ('queued', 'running') AND id = ?",
            (claimed[0].id,),
        ).fetchone()[0]
        == 0
    )
    # a job queued now: a 26-character id made of its seq, found by seq; then claimed and done
    jid = q.enqueue(model="iris", version=None, kind="tensors", payload=b"x")
    assert len(jid) == 26 and int(jid[:12], 16) == before[-1][0] + 1
    assert "INTEGER PRIMARY KEY" in _plan(st, "SELECT * FROM jobs WHERE seq = ? AND id = ?", (1, jid))
    (new,) = JobQueue(st).claim_many("other", 10)
    assert new.id == jid and JobQueue(st).complete(new, {"new": True}, "1")
    assert st.result(jid).body == {"new": True} and st.result(ids["results"][3]).body == {"i": 3}


def test_ids_made_of_a_seq_are_unguessable_and_unknown_ids_are_not_found(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    q = JobQueue(st)
    jids = [q.enqueue(model="iris", version=None, kind="tensors", payload=b"x") for _ in range(3)]
    assert [int(j[:12], 16) for j in jids] == [1, 2, 3] and len(set(j[12:] for j in jids)) == 3
    for wrong in (jids[0][:12] + "0" * 14, "f" * 26, "nope", jids[0].upper(), "0" * 32):
        with pytest.raises(JobNotFound):
            q.get(wrong)
    with st.transaction() as conn, pytest.raises(ValueError, match="32 characters"):
        q.add(conn, model="iris", version=None, kind="tensors", payload=b"x", job_id="short")
    keyed = idempotent_id("k")
    for _ in range(2):
        with st.transaction() as conn:
            assert (
                q.add(conn, model="iris", version=None, kind="tensors", payload=b"x", job_id=keyed) == keyed
            )
    assert st.conn.execute("SELECT COUNT(*) FROM jobs WHERE id = ?", (keyed,)).fetchone()[0] == 1
    assert q.get(keyed).seq == 4


def test_queueing_a_job_writes_its_rows_page_and_no_index_page(tmp_path: Path) -> None:
    """Decoded from the WAL: each job's commit holds pages of the jobs table (and page 1 when
    the file grows), never a page of an index."""
    st = Storage.in_dir(tmp_path)
    q = JobQueue(st)
    for i in range(40):
        q.enqueue(model="iris", version="1", kind="tensors", payload=bytes(70) + bytes([i]))
    found = commits((tmp_path / "agent.sqlite3-wal").read_bytes())[-40:]
    with sqlite3.connect(tmp_path / "agent.sqlite3") as conn:
        names = {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
    touched = {names.get(page, "?") for c in found for page in c if page != 1}
    assert touched == {"jobs"}, touched
    assert sum(len(c) for c in found) < 40 * 2  # mostly one page per job


def test_the_upgrade_killed_at_any_moment_leaves_the_previous_schema_or_the_new_one(tmp_path: Path) -> None:
    seen: set[int] = set()
    for k, delay in enumerate((0.05, 0.15, 0.3, 0.5, 0.8, 1.2)):
        d = tmp_path / f"db{k}"
        d.mkdir()
        previous_database(d / "agent.sqlite3", jobs=6000, results=2000)
        with sqlite3.connect(d / "agent.sqlite3") as conn:
            jobs = conn.execute("SELECT rowid, id, status FROM jobs ORDER BY rowid").fetchall()
        kill_upgrade(d, delay)
        with sqlite3.connect(d / "agent.sqlite3") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT rowid, id, status FROM jobs ORDER BY rowid").fetchall() == jobs
            columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
            assert conn.execute("SELECT id, body, created FROM clock_corrections").fetchall() == [CORRECTION]
        assert version in (PREVIOUS, len(MIGRATIONS)), version
        assert ("seq" in columns) == (version == len(MIGRATIONS))
        seen.add(version)
        st = Storage.in_dir(d)  # and it upgrades on the next start
        assert st.schema_version == len(MIGRATIONS)
        assert JobQueue(st).get(jobs[-1][1]).status == jobs[-1][2]
        st.close()
    print("versions seen after the kills:", sorted(seen))


def test_bodies_use_the_dictionary_and_older_bodies_still_read() -> None:
    body = {
        "model": "iris",
        "version": "1",
        "results": [{"label": "setosa", "index": 0, "score": 0.9999831914901733}],
        "timings_ms": {"preprocess": 0.267, "infer": 0.455, "total": 1.464},
    }
    text = json.dumps(body, separators=(",", ":"))
    packed = pack_body(body)
    assert len(packed) < len(zlib.compress(text.encode(), 6)) * 0.8
    assert unpack_body(packed) == body
    assert unpack_body(zlib.compress(text.encode())) == body and unpack_body(text) == body
    other = zlib.compressobj(6, zdict=b'{"unknown":"dictionary"}')
    with pytest.raises(StorageError, match="dictionary"):
        unpack_body(other.compress(text.encode()) + other.flush())
