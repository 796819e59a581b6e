"""The cloud database: schema, idempotent writes, queries. Each test on a real SQLite file in a tmp dir
and on a fresh database of a real PostgreSQL server (tests/pgserver.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_sync.errors import InvalidRequest, NotFound, Rejected, SchemaTooNew, StoreError, ValueRefused
from cloud_sync.store import ResultQuery, Store, result_label
from cloud_sync.store.schema import MIGRATIONS
from cloud_sync.store.writes import INSERT_RESULT
from edge_agent.sync import protocol
from tests.cloud import query, result_record, results_msg, status_msg
from tests.conftest import CloudDb, PgUrl


@pytest.fixture
def store(cloud_db: CloudDb) -> Iterator[Store]:
    s = Store(cloud_db)
    yield s
    s.close()


def test_schema_is_created_once_and_reopening_is_harmless(cloud_db: CloudDb) -> None:
    first = Store(cloud_db)
    assert first.schema_version == len(MIGRATIONS)
    tables = first.table_names()
    assert {"devices", "status_history", "telemetry", "results", "commands", "command_replies"} <= tables
    assert {"models", "model_versions", "deployments", "deployment_devices"} <= tables
    first.close()
    again = Store(cloud_db)
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_a_newer_schema_is_refused(cloud_db: CloudDb) -> None:
    Store(cloud_db).close()
    if isinstance(cloud_db, PgUrl):
        query(cloud_db, "UPDATE schema_version SET version = 99")
    else:
        conn = sqlite3.connect(cloud_db)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade cloud_sync"):
        Store(cloud_db)


def test_concurrent_opens_migrate_once(cloud_db: CloudDb) -> None:
    errors: list[Exception] = []

    def open_store() -> None:
        try:
            Store(cloud_db).close()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    again = Store(cloud_db)
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_an_sqlite_file_of_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file the sqlite-utils schema wrote (version 1) gains the version 2 indexes and keeps its rows."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript((Path(__file__).parent / "schema_v1_sqlite_utils.sql").read_text())
    conn.execute("INSERT INTO devices (id, first_seen, last_seen) VALUES ('dev1', 1.0, 2.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.device("dev1")["last_seen"] == 2.0
    indexes = {r[0] for r in query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_devices_online_id" in indexes
    ids, _ = store.record_results(results_msg("dev1", [result_record()]), time.time(), "i")
    assert len(ids) == 1
    store.close()


def test_an_unreachable_postgresql_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match=r"cannot connect to postgresql://cloud:\*\*\*@127.0.0.1:9/"):
        Store("postgresql://cloud:secret@127.0.0.1:9/nothing", connect_timeout_s=1.0)


def test_a_redelivered_batch_is_stored_once(store: Store) -> None:
    msg = results_msg("dev1", [result_record() for _ in range(4)])
    for _ in range(3):
        ids, refused = store.record_results(msg, time.time(), "ingest-a")
        assert ids == [r.id for r in msg.results]
        assert refused == []
    assert store.count("results") == 4
    assert store.device("dev1")["online"] is None  # seen, but no status yet


def test_a_result_id_of_another_device_is_refused(store: Store) -> None:
    record = result_record()
    store.record_results(results_msg("dev1", [record]), time.time(), "i")
    mine = result_record()
    ids, refused = store.record_results(results_msg("dev2", [record, mine]), time.time(), "i")
    assert ids == [mine.id]
    assert refused == [record.id]
    assert store.result(record.id)["device"] == "dev1"


def test_a_result_with_a_non_finite_number_is_refused_alone(store: Store) -> None:
    bad = protocol.ResultRecord(
        id="bad", source="s", model="m", version="1", created=1.0, body={"x": float("nan")}
    )
    good = result_record()
    ids, refused = store.record_results(results_msg("dev1", [bad, good]), time.time(), "i")
    assert (ids, refused) == ([good.id], ["bad"])


def test_status_history_is_deduplicated_and_the_last_will_wins(store: Store) -> None:
    will = protocol.Status(device="dev1", state="offline", ts=time.time())  # set at connect time
    birth = status_msg("dev1")  # published after connecting: a later ts than the will
    t0 = time.time()
    store.record_status(birth, t0)
    store.record_status(birth, t0 + 1)  # a retained copy seen again
    assert store.device("dev1")["online"] is True
    store.record_status(will, t0 + 2)  # the broker publishes the will when the socket dies
    device = store.device("dev1")
    assert device["online"] is False
    assert device["agent_version"] == "0.1.0"  # the will does not clobber what the birth said
    assert [h["state"] for h in store.status_history("dev1")] == ["offline", "online"]
    store.record_status(birth, t0 + 0.5)  # arrived earlier elsewhere (another ingest): older, ignored
    assert store.device("dev1")["online"] is False


def test_telemetry_is_stored_once_per_timestamp(store: Store) -> None:
    msg = protocol.Telemetry(device="dev1", ts=time.time(), metrics={"cpu": 0.5})
    store.record_telemetry(msg, time.time())
    store.record_telemetry(msg, time.time())
    rows = store.telemetry("dev1")
    assert len(rows) == 1
    assert rows[0]["metrics"] == {"cpu": 0.5}
    with pytest.raises(ValidationError, match="finite"):  # the wire contract refuses it before the store
        protocol.Telemetry(device="dev1", ts=1.0, metrics={"x": float("inf")})


def test_replies_are_stored_against_their_command(store: Store) -> None:
    store.record_status(status_msg("dev1"), time.time())
    store.add_command("c1", "dev1", "ping", {}, time.time())
    reply = protocol.CommandReply(device="dev1", id="c1", ok=True, result={"pong": 1}, ts=time.time())
    store.record_reply(reply, time.time())
    store.record_reply(
        reply.model_copy(update={"result": {"pong": 2}}), time.time()
    )  # redelivered: first wins
    store.mark_command("c1", "sent")  # a late "sent" does not undo "replied"
    cmd = store.command("c1")
    assert cmd["state"] == "replied"
    assert cmd["reply"]["ok"] is True
    assert cmd["reply"]["result"] == {"pong": 1}
    with pytest.raises(Rejected, match="unknown command"):
        store.record_reply(reply.model_copy(update={"id": "nope"}), time.time())
    store.record_status(status_msg("dev2"), time.time())
    with pytest.raises(Rejected, match="sent to 'dev1'"):
        store.record_reply(reply.model_copy(update={"device": "dev2"}), time.time())
    with pytest.raises(NotFound, match="never sent"):
        store.add_command("c2", "ghost", "ping", {}, time.time())


def test_a_snapshot_reads_one_state_of_the_database(cloud_db: CloudDb) -> None:
    reader, writer = Store(cloud_db), Store(cloud_db)  # two connections, as the API and the ingest
    try:
        writer.record_status(status_msg("dev1"), time.time())
        with reader.snapshot():
            before = [d["id"] for d in reader.devices()]
            writer.record_status(status_msg("dev2"), time.time())  # committed meanwhile
            during = [d["id"] for d in reader.devices()]
        after = [d["id"] for d in reader.devices()]
    finally:
        reader.close()
        writer.close()
    assert before == during == ["dev1"]
    assert after == ["dev1", "dev2"]


def test_a_command_is_read_with_its_reply_in_one_snapshot(cloud_db: CloudDb) -> None:
    # A reply stored between two reads once showed beside the state it replaced ("sent" with a
    # reply): the API's long-poll then answered early with the old state. Replies go in from
    # one thread (the ingest's) while another reads (the API's) until each command has its reply.
    writer, reader = Store(cloud_db), Store(cloud_db)
    writer.record_status(status_msg("dev1"), time.time())
    ids = [f"snap-{i}" for i in range(300)]
    for cid in ids:
        writer.add_command(cid, "dev1", "ping", {}, time.time())
        writer.mark_command(cid, "sent")
    done = threading.Event()

    def reply_all() -> None:
        try:
            for cid in ids:
                reply = protocol.CommandReply(device="dev1", id=cid, ok=True, result={"n": 1}, ts=time.time())
                writer.record_reply(reply, time.time())
        finally:
            done.set()

    torn: list[tuple[str, str]] = []
    reads = 0
    thread = threading.Thread(target=reply_all)
    thread.start()
    try:
        while not done.is_set() or reads == 0:
            for cid in ids:
                cmd = reader.command(cid)
                reads += 1
                if (cmd["reply"] is not None) != (cmd["state"] == "replied"):
                    torn.append((cid, cmd["state"]))
                if done.is_set():
                    break
    finally:
        thread.join()
        writer.close()
    final = [reader.command(cid) for cid in ids]
    reader.close()
    assert torn == [], f"{len(torn)} of {reads} reads showed a reply beside another state: {torn[:3]}"
    assert all(c["state"] == "replied" and c["reply"]["result"] == {"n": 1} for c in final)


def test_result_queries_filter_and_page(store: Store) -> None:
    t0 = 1_700_000_000.0
    for device in ("dev1", "dev2"):
        records = [
            result_record(model=("iris" if i % 2 else "digits"), label=f"l{i % 3}", created=t0 + i)
            for i in range(15)
        ]
        store.record_results(results_msg(device, records), time.time(), "i")
    assert len(store.results(ResultQuery(limit=1000)).items) == 30
    assert {r["device"] for r in store.results(ResultQuery(device="dev2", limit=100)).items} == {"dev2"}
    iris_l1 = store.results(ResultQuery(model="iris", label="l1", limit=100)).items
    assert iris_l1 and all(r["model"] == "iris" and r["label"] == "l1" for r in iris_l1)
    window = store.results(ResultQuery(since=t0 + 5, until=t0 + 10, limit=100)).items
    assert sorted({r["created"] for r in window}) == [t0 + i for i in range(5, 10)]
    # cursor paging: every row once, newest first, in stable order
    seen, cursor = [], None
    while True:
        page = store.results(ResultQuery(limit=7, cursor=cursor))
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 30 == len({r["id"] for r in seen})
    assert [r["created"] for r in seen] == sorted((r["created"] for r in seen), reverse=True)
    oldest = store.results(ResultQuery(limit=3, newest_first=False)).items
    assert [r["created"] for r in oldest] == [t0, t0, t0 + 1]
    assert store.results(ResultQuery(limit=5, offset=25)).items == seen[25:]
    assert seen[0]["body"]["score"] == 0.9
    with pytest.raises(InvalidRequest, match="cursor"):
        store.results(ResultQuery(cursor="garbage!"))
    with pytest.raises(InvalidRequest, match="not both"):
        store.results(ResultQuery(cursor=cursor, offset=3))


def test_result_label_is_the_primary_label() -> None:
    assert result_label({"label": "cat"}) == "cat"
    assert result_label({"predictions": [{"label": "dog"}, {"label": "cat"}]}) == "dog"
    assert result_label({"boxes": [{"label": "face"}]}) == "face"
    assert result_label({"boxes": []}) is None


def test_models_deployments_and_reported_state(store: Store) -> None:
    store.add_model_version("iris", "2", {"name": "iris", "version": "2"}, sha256="ab" * 32, created=1.0)
    assert store.models() == [{"name": "iris", "description": None, "created": 1.0, "versions": 1}]
    assert store.model("iris")["versions"][0]["manifest"]["version"] == "2"
    with pytest.raises(NotFound):
        store.create_deployment("d1", [{"model": "iris", "version": "9"}], ["dev1"], 2.0)
    store.create_deployment("d1", [{"model": "iris", "version": "2"}], ["dev1"], 2.0)
    now = time.time()
    outcome = protocol.UpdateOutcome(deployment="d1", model="iris", version="2", state="active", ts=now - 3)
    reported = protocol.ModelsReported(device="dev1", models={"iris": "2"}, last_update=outcome, ts=now - 3)
    store.record_reported(reported, now)
    store.record_reported(
        reported.model_copy(update={"ts": now - 9, "models": {"iris": "1"}}), now + 1
    )  # older (arrived late)
    assert store.device("dev1")["reported_models"] == {"iris": "2"}
    deployment = store.deployment("d1")
    assert deployment["models"] == [{"model": "iris", "version": "2"}]
    assert [(d["device"], d["state"]) for d in deployment["device_states"]] == [("dev1", "active")]
    with pytest.raises(NotFound):
        store.deployment("nope")


def _figures(model: str, version: str, ts: float, p50: float) -> protocol.ModelBench:
    stage = protocol.StageFigures(p50_ms=p50 / 2, p99_ms=p50)
    row = protocol.BenchRow(
        batch=1, threads=1, calls=10, p50_ms=p50, p99_ms=2 * p50, throughput_rps=1000 / p50,
        stages={"preprocess": stage, "infer": stage, "postprocess": stage},
    )  # fmt: skip
    return protocol.ModelBench(
        model=model, version=version, backend="onnx", inputs="tensors", memory_mb=3.5, ts=ts, rows=[row]
    )


def test_bench_figures_keep_the_latest_per_device_and_model(store: Store) -> None:
    outcome = protocol.UpdateOutcome(deployment="d1", model="iris", version="2", state="active", ts=3.0)
    first = protocol.ModelsReported(
        device="dev1", models={"iris": "2"}, last_update=outcome, ts=3.0,
        bench={"iris": _figures("iris", "2", 3.0, 0.5)},
    )  # fmt: skip
    store.record_reported(first, 10.0)
    # a later report for new figures, without an update outcome: the known outcome stays
    later = protocol.ModelsReported(
        device="dev1", models={"iris": "2"}, ts=5.0,
        bench={"iris": _figures("iris", "2", 5.0, 0.4), "digits": _figures("digits", "1", 5.0, 1.0)},
    )  # fmt: skip
    store.record_reported(later, 11.0)
    stale = protocol.ModelsReported(
        device="dev1", models={"iris": "2"}, ts=6.0, bench={"iris": _figures("iris", "1", 1.0, 9.0)}
    )
    store.record_reported(stale, 12.0)  # figures older than the stored ones are ignored
    store.record_reported(protocol.ModelsReported(device="dev2", models={}, ts=6.0), 12.0)  # no bench

    rows = store.bench()
    assert [(r["model"], r["device"], r["version"]) for r in rows] == [
        ("digits", "dev1", "1"),
        ("iris", "dev1", "2"),
    ]
    iris = store.bench(device="dev1", model="iris")[0]
    assert iris["figures"]["rows"][0]["p50_ms"] == 0.4 and iris["ts"] == 5.0 and iris["received"] == 11.0
    assert store.bench(device="dev2") == []
    assert store.device("dev1")["last_update"]["state"] == "active"


def test_implausible_and_unsynced_device_times_are_flagged_not_stored_as_1970(store: Store) -> None:
    now = time.time()
    good = result_record(created=now - 5).model_copy(update={"seq": 7})
    y1970 = result_record(created=86_400.0)  # a Pi that booted without a clock, and says nothing
    ahead = result_record(created=now + 10 * 86_400)
    unsynced = result_record(created=now - 60).model_copy(update={"clock": "unsynced", "seq": 8})
    fixed = result_record(created=now - 30).model_copy(update={"clock": "corrected", "seq": 9})
    ids, refused = store.record_results(results_msg("dev1", [good, y1970, ahead, unsynced, fixed]), now, "i")
    assert len(ids) == 5 and refused == []
    with store.reading() as db:
        found = db.execute("SELECT id, created, time_flag, device_created, seq FROM results").fetchall()
    rows = {r[0]: tuple(r) for r in found}
    assert rows[good.id] == (good.id, good.created, None, None, 7)
    assert rows[y1970.id] == (y1970.id, now, "implausible", 86_400.0, None)
    assert rows[ahead.id] == (ahead.id, now, "implausible", ahead.created, None)
    assert rows[unsynced.id] == (unsynced.id, now, "unsynced", unsynced.created, 8)
    assert rows[fixed.id] == (fixed.id, fixed.created, "corrected", None, 9)


def test_rollout_waves_follow_the_groups_devices_report(store: Store) -> None:
    from cloud_sync.errors import InvalidRequest
    from cloud_sync.rollout import plan_waves, waves_by_group
    from edge_agent.sync.protocol import Status

    for name, group in (("a", "canary"), ("b", None), ("c", "pilot"), ("d", "canary"), ("e", None)):
        store.record_status(Status(device=name, state="online", ts=time.time(), group=group), time.time())
    devices = store.devices()
    assert waves_by_group(devices, ["canary", "pilot", "*"]) == [["a", "d"], ["c"], ["b", "e"]]
    assert waves_by_group(devices, ["pilot", "*"]) == [["c"], ["a", "b", "d", "e"]]
    with pytest.raises(InvalidRequest, match="no device reports the rollout group 'nope'"):
        waves_by_group(devices, ["nope"])
    names = [f"d{i:02d}" for i in range(20)]
    assert [len(w) for w in plan_waves(names)] == [1, 1, 8, 10]  # 1, 10 %, 50 %, all (cumulative)
    assert [len(w) for w in plan_waves(names[:4])] == [1, 1, 2]


def test_counters_sessions_and_rollouts_are_kept(store: Store) -> None:
    assert [store.next_counter("targets:dev1") for _ in range(3)] == [1, 2, 3]
    assert store.next_counter("release:iris") == 1  # each counter on its own
    assert not store.session_revoked("n1")
    store.revoke_session("n1", time.time() + 60)
    store.revoke_session("n1", time.time() + 60)  # a second logout of the same session is harmless
    store.revoke_session("old", time.time() - 1)  # already expired: dropped by the next revocation
    store.revoke_session("n2", time.time() + 60)
    assert store.session_revoked("n1") and store.session_revoked("n2")
    assert not store.session_revoked("old")
    store.save_rollout("r1", "running", {"id": "r1", "wave": 0}, 10.0)
    store.save_rollout("r2", "done", {"id": "r2", "wave": 3}, 20.0)
    store.save_rollout("r1", "paused", {"id": "r1", "wave": 1}, 30.0)
    r1 = store.rollout("r1")
    assert (r1["state"], r1["doc"], r1["created"], r1["updated"]) == (
        "paused",
        {"id": "r1", "wave": 1},
        10.0,
        30.0,
    )
    assert [r["id"] for r in store.rollouts()] == ["r2", "r1"]  # newest first
    assert [r["id"] for r in store.rollouts(states=["paused", "running"])] == ["r1"]
    with pytest.raises(NotFound, match="no rollout 'r3'"):
        store.rollout("r3")


def test_next_counter_is_atomic_across_threads(cloud_db: CloudDb) -> None:
    stores = [Store(cloud_db) for _ in range(4)]
    got: list[int] = []
    lock = threading.Lock()

    def bump(s: Store) -> None:
        for _ in range(10):
            n = s.next_counter("release:iris")
            with lock:
                got.append(n)

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(got) == list(range(1, 41))  # every value handed out once


def test_a_value_the_database_refuses_is_refused_and_rolls_back_alone(store: Store) -> None:
    """A data or integrity error is the value's fault (``ValueRefused``, a 4xx), not the database
    being unavailable (``StoreError``, retried): the ingest rejects that one message. Inside a
    transaction it rolls back its savepoint only, on PostgreSQL's pipeline mode too."""
    row = ["r-1", "d1", "b", None, None, "iris", "1", "setosa", 1.0, 1.0, "i", "{}", None, None, 1]
    with store.transaction():
        store.touch_devices({"d1": 1.0})
        with pytest.raises(ValueRefused), store.transaction() as tx:
            tx.execute(INSERT_RESULT, row)  # source is NOT NULL
        store.touch_devices({"d2": 2.0})
    assert {d["id"] for d in store.devices()} == {"d1", "d2"}
    if store.dialect == "postgresql":  # NUL in text: PostgreSQL refuses it, SQLite stores it
        with pytest.raises(ValueRefused, match="NUL"), store.transaction() as tx:
            tx.execute(INSERT_RESULT, [*row[:3], "cam\x00", *row[4:]])


def test_results_and_status_holding_a_nul_character_are_refused_on_both_databases(store: Store) -> None:
    good, nul = result_record(), result_record().model_copy(update={"source": "cam\x00era"})
    stored, refused = store.record_results(results_msg("d1", [good, nul]), time.time(), "i")
    assert (stored, refused) == ([good.id], [nul.id])
    with pytest.raises(Rejected, match="NUL"):
        store.record_status(status_msg("d1").model_copy(update={"agent_version": "1\x00"}), time.time())


def test_a_pipelined_savepoint_rolls_back_alone_and_a_refused_value_fails_the_commit(store: Store) -> None:
    """``transaction(sync=False)`` (the ingest's first try at a batch): a Python-side refusal rolls
    back that savepoint only; an error the server finds surfaces by the commit at the latest, as
    ``ValueRefused``, and nothing of the transaction is kept."""
    row = ["r-1", "d1", "b", "cam", None, "iris", "1", "setosa", 1.0, 1.0, "i", "{}", None, None, 1]
    with store.transaction():
        store.touch_devices({"d1": 1.0})
        with pytest.raises(Rejected), store.transaction(sync=False) as tx:
            tx.execute(INSERT_RESULT, ["r-0", *row[1:]])
            raise Rejected("refused after a write")
        with store.transaction(sync=False) as tx:
            tx.execute(INSERT_RESULT, row)
    assert [r["id"] for r in store.results(ResultQuery()).items] == ["r-1"]
    with pytest.raises(ValueRefused), store.transaction():  # source NOT NULL, found by the server
        store.touch_devices({"d2": 2.0})
        with store.transaction(sync=False) as tx:
            tx.execute(INSERT_RESULT, ["r-2", "d2", "b", None, *row[4:]])
        store.touch_devices({"d3": 3.0})
    assert {d["id"] for d in store.devices()} == {"d1"}


def test_a_report_from_a_device_back_in_1970_is_ordered_by_arrival(store: Store) -> None:
    """A Pi rebooted without its clock reports with a 1970 ts: ordered by when it arrived, it is not
    ignored as older than what the device reported before the reboot (nor hides later ones)."""
    now = time.time()
    store.add_model_version("iris", "2", {"name": "iris", "version": "2"}, sha256="ab" * 32, created=1.0)
    store.create_deployment("d1", [{"model": "iris", "version": "2"}], ["dev1"], 2.0)
    before = protocol.UpdateOutcome(
        deployment="d1", model="iris", version="2", state="downloading", ts=now - 60
    )
    store.record_reported(
        protocol.ModelsReported(device="dev1", models={"iris": "1"}, last_update=before, ts=now - 60),
        now - 60,
    )
    after = before.model_copy(update={"state": "failed", "reason": "clock_untrusted", "ts": 86_400.0})
    store.record_reported(
        protocol.ModelsReported(device="dev1", models={"iris": "1"}, last_update=after, ts=86_400.0), now
    )
    assert store.device("dev1")["last_update"]["reason"] == "clock_untrusted"
    assert [(d["state"], d["reason"]) for d in store.deployment("d1")["device_states"]] == [
        ("failed", "clock_untrusted")
    ]
    ahead = before.model_copy(update={"state": "active", "ts": now + 20 * 86_400})  # a clock in the future
    store.record_reported(
        protocol.ModelsReported(device="dev1", models={"iris": "2"}, last_update=ahead, ts=now + 20 * 86_400),
        now + 1,
    )
    later = before.model_copy(update={"state": "rolled_back", "ts": now + 5})  # the clock set right
    store.record_reported(
        protocol.ModelsReported(device="dev1", models={"iris": "1"}, last_update=later, ts=now + 5), now + 5
    )
    assert store.device("dev1")["reported_models"] == {"iris": "1"}
    assert [d["state"] for d in store.deployment("d1")["device_states"]] == ["rolled_back"]


def test_every_report_stamped_by_a_clock_in_1970_is_stored_at_its_arrival_and_flagged(store: Store) -> None:
    """One rule for every device time the cloud keeps (clocks.device_time): a Pi rebooted without its
    clock sends status, telemetry, a command reply, bench figures and an update outcome stamped 1970;
    each is stored at its arrival, flagged ``implausible``, the device's own time kept; plausible
    ones are stored as sent, unflagged. A retained status seen again adds no history row."""
    now, ts_1970 = time.time(), 86_400.0 + 42.0
    before = status_msg("dev1").model_copy(update={"ts": now - 100})  # before the reboot: a plausible clock
    store.record_status(before, now - 100)
    store.record_telemetry(protocol.Telemetry(device="dev1", ts=now - 100, metrics={"cpu": 0.1}), now - 100)
    back = status_msg("dev1").model_copy(update={"ts": ts_1970})
    store.record_status(back, now - 10)
    store.record_status(back, now - 5)  # the retained birth delivered again (an ingest reconnected)
    history = store.status_history("dev1")
    assert [(h["ts"], h["time_flag"], h["device_ts"]) for h in history] == [
        (now - 10, "implausible", ts_1970),
        (now - 100, None, None),
    ]
    assert store.device("dev1")["status_ts"] == now - 5  # device state: in arrival order, as always

    store.record_telemetry(protocol.Telemetry(device="dev1", ts=ts_1970, metrics={"cpu": 0.9}), now - 9)
    rows = store.telemetry("dev1")
    assert [(r["ts"], r["time_flag"], r["device_ts"], r["metrics"]) for r in rows] == [
        (now - 9, "implausible", ts_1970, {"cpu": 0.9}),  # newest: the fleet page shows it
        (now - 100, None, None, {"cpu": 0.1}),
    ]
    assert json.loads(store.latest_metrics(["dev1"])["dev1"]) == {"cpu": 0.9}
    ahead = now + 30 * 86_400.0  # a clock years (here a month) ahead is implausible too
    store.record_telemetry(protocol.Telemetry(device="dev1", ts=ahead, metrics={"cpu": 0.5}), now - 8)
    assert store.telemetry("dev1", limit=1)[0]["device_ts"] == ahead

    store.add_command("c1", "dev1", "ping", {}, now - 20)
    store.record_reply(protocol.CommandReply(device="dev1", id="c1", ok=True, ts=ts_1970), now - 7)
    reply = store.command("c1")["reply"]
    assert (reply["ts"], reply["time_flag"], reply["device_ts"]) == (now - 7, "implausible", ts_1970)

    store.add_model_version("iris", "2", {"name": "iris", "version": "2"}, sha256="ab" * 32, created=1.0)
    store.create_deployment("d1", [{"model": "iris", "version": "2"}], ["dev1"], now - 30)
    outcome = protocol.UpdateOutcome(deployment="d1", model="iris", version="2", state="active", ts=ts_1970)
    report = protocol.ModelsReported(
        device="dev1", models={"iris": "2"}, last_update=outcome, ts=ts_1970,
        bench={"iris": _figures("iris", "2", ts_1970, 0.5)},
    )  # fmt: skip
    store.record_reported(report, now - 6)
    (state,) = store.deployment("d1")["device_states"]
    assert (state["ts"], state["time_flag"], state["device_ts"]) == (now - 6, "implausible", ts_1970)
    (bench,) = store.bench("dev1")
    assert (bench["ts"], bench["time_flag"], bench["device_ts"]) == (now - 6, "implausible", ts_1970)
    assert store.device("dev1")["reported_ts"] == now - 6

    # NTP answered: the next reports are stored as sent, unflagged
    store.record_telemetry(protocol.Telemetry(device="dev1", ts=now - 1, metrics={"cpu": 0.2}), now)
    newest = store.telemetry("dev1", limit=1)[0]
    assert (newest["ts"], newest["time_flag"], newest["device_ts"]) == (now - 1, None, None)
    synced = report.model_copy(update={"ts": now - 1, "bench": {"iris": _figures("iris", "2", now - 1, 0.4)}})
    store.record_reported(synced, now)
    (bench,) = store.bench("dev1")
    assert (bench["ts"], bench["time_flag"], bench["device_ts"]) == (now - 1, None, None)
