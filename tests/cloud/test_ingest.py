"""The ingest role as a real subprocess against a real mosquitto, fed by a simulated device on paho."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from cloud_sync.store import Store
from edge_agent.sync import protocol
from tests.cloud import (
    Role,
    query,
    result_record,
    results_msg,
    running,
    sim_device,
    start_ingest,
    status_msg,
    wait_for,
)
from tests.conftest import CloudDb
from tests.sync.broker import Broker, run_broker


def device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


def count_results(db: CloudDb, device: str) -> int:
    return int(query(db, "SELECT count(*) FROM results WHERE device = ?", device)[0][0])


def test_a_batch_published_three_times_is_stored_once_and_acked_each_time(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    dev = device_id()
    with sim_device(broker, dev) as device:
        msg = results_msg(dev, [result_record() for _ in range(5)])
        for _ in range(3):
            device.publish(msg, "results")
        wait_for(lambda: len(device.acks) == 3, what="three acks")
        assert all(ack.batch == msg.batch and ack.ids == [r.id for r in msg.results] for ack in device.acks)
    assert count_results(db, dev) == 5


def test_acks_name_only_stored_ids(ingest: Role, broker: Broker, db: CloudDb) -> None:
    owner, other = device_id(), device_id()
    taken = result_record()
    with sim_device(broker, owner) as first, sim_device(broker, other) as second:
        first.publish(results_msg(owner, [taken]), "results")
        wait_for(lambda: first.acked_ids() == {taken.id}, what="owner's ack")
        fresh = result_record()
        doc = results_msg(other, [taken, fresh]).model_dump()
        nan_id = uuid.uuid4().hex  # json.dumps writes NaN, which Python's JSON parser accepts
        doc["results"].append({**fresh.model_dump(), "id": nan_id, "body": {"score": float("nan")}})
        second.publish_raw(protocol.topic(other, "results"), json.dumps(doc).encode())
        wait_for(lambda: second.acks, what="the other device's ack")
        assert second.acks[0].ids == [fresh.id]  # not the id another device owns, not the NaN one
        assert sorted(second.acks[0].rejected) == sorted([taken.id, nan_id])  # named: never re-sent
    assert count_results(db, other) == 1
    assert "refused" in ingest.text()


def test_results_that_cannot_be_decoded_are_rejected_by_id_and_the_rest_stored(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    """A result that fails the contract (a non-finite ``created``, a wrong type, a missing field)
    makes its message undecodable; the ingest still stores the valid ones and names the others
    in ``rejected``, or the device would re-send the whole message forever."""
    dev = device_id()
    good = result_record()
    bad = {
        "nan": {**result_record().model_dump(), "created": float("nan")},
        "type": {**result_record().model_dump(), "created": "yesterday"},
        "missing": {k: v for k, v in result_record().model_dump().items() if k != "model"},
    }
    doc = results_msg(dev, [good]).model_dump()
    doc["results"] += [{**record, "id": name} for name, record in bad.items()]
    doc["results"].append({"no": "id"})  # nothing to name: left out of the ack
    with sim_device(broker, dev) as device:
        device.publish_raw(protocol.topic(dev, "results"), json.dumps(doc).encode())
        wait_for(lambda: device.acks, what="the ack")
        assert device.acks[0].batch == doc["batch"]
        assert device.acks[0].ids == [good.id]
        assert sorted(device.acks[0].rejected) == sorted(bad)
        # an envelope that names another device, or another schema version, gets no ack at all
        for change in ({"device": device_id()}, {"v": 2}):
            device.publish_raw(protocol.topic(dev, "results"), json.dumps(doc | change).encode())
        device.publish(results_msg(dev, [result_record()]), "results")
        wait_for(lambda: len(device.acks) == 2, what="the valid message's ack")
        time.sleep(0.3)
        assert len(device.acks) == 2
    assert count_results(db, dev) == 2


def test_the_last_will_marks_a_device_offline(ingest: Role, broker: Broker, db: CloudDb) -> None:
    dev = device_id()
    with sim_device(broker, dev, will=True) as device:
        device.publish(status_msg(dev), "status", retain=True)
        wait_for(lambda: query(db, "SELECT online FROM devices WHERE id = ?", dev) == [(1,)], what="online")
        device.kill_socket()  # no DISCONNECT: the broker publishes the will
        wait_for(lambda: query(db, "SELECT online FROM devices WHERE id = ?", dev) == [(0,)], what="offline")
    states = query(db, "SELECT state FROM status_history WHERE device = ? ORDER BY received", dev)
    assert states == [("online",), ("offline",)]


def test_a_device_id_that_disagrees_with_the_topic_is_rejected(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    claimed, actual = device_id(), device_id()
    with sim_device(broker, actual) as device:
        device.publish_raw(
            protocol.topic(actual, "results"), protocol.encode(results_msg(claimed, [result_record()]))
        )
        device.publish_raw(protocol.topic(actual, "status"), protocol.encode(status_msg(claimed)))
        ingest.wait_log(f"payload names device {claimed!r} but was published under {actual!r}")
        time.sleep(0.2)
        assert device.acks == []
    assert query(db, "SELECT count(*) FROM devices WHERE id IN (?, ?)", claimed, actual) == [(0,)]


def garbage(dev: str) -> list[bytes]:
    valid = json.loads(protocol.encode(status_msg(dev)))
    return [
        b"",
        b"\xff\xfe\x00not utf-8",
        b"not json at all",
        b"[1, 2, 3]",
        b"null",
        json.dumps({**valid, "v": 99}).encode(),
        json.dumps({"v": 1, "device": dev}).encode(),  # valid version, missing fields
        json.dumps({"v": 1, "device": dev, "unexpected": True, "ts": 1}).encode(),
        b"[" * 200_000,  # nested past Python's recursion limit
        b'{"v": 1, "pad": "' + b"x" * (protocol.MAX_PAYLOAD_BYTES + 10) + b'"}',  # oversized
    ]


def test_garbage_on_every_topic_is_rejected_and_ingest_keeps_working(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    dev = device_id()
    before = ingest.text().count("rejected message")
    with sim_device(broker, dev) as device:
        sent = 0
        for kind in sorted(protocol.DEVICE_TO_CLOUD):
            for payload in garbage(dev):
                device.publish_raw(protocol.topic(dev, kind), payload)
                sent += 1
        wait_for(lambda: ingest.text().count("rejected message") - before >= sent, what=f"{sent} rejections")
        assert ingest.alive
        log = ingest.text()
        for reason in (
            "not JSON",
            "schema version 99",
            "maximum recursion depth",  # deeply nested JSON, caught by protocol.decode
            "over 262144",
            "must be a JSON object",
        ):
            assert reason in log, reason
        record = result_record()
        device.publish(results_msg(dev, [record]), "results")
        wait_for(lambda: device.acked_ids() == {record.id}, what="the valid message's ack")
    assert count_results(db, dev) == 1
    assert "Traceback" not in ingest.text()


def test_telemetry_replies_and_reported_models_are_stored(ingest: Role, broker: Broker, db: CloudDb) -> None:
    dev = device_id()
    with sim_device(broker, dev) as device:
        device.publish(status_msg(dev), "status")
        wait_for(lambda: query(db, "SELECT 1 FROM devices WHERE id = ?", dev), what="device row")
        store = Store(db)
        store.add_command("cmd-" + dev, dev, "ping", {}, time.time())
        store.close()
        device.publish(protocol.Telemetry(device=dev, ts=time.time(), metrics={"cpu": 0.25}), "telemetry")
        reply = protocol.CommandReply(
            device=dev, id="cmd-" + dev, ok=True, result={"pong": True}, ts=time.time()
        )
        device.publish(reply, "cmd_reply")
        device.publish(
            protocol.ModelsReported(device=dev, models={"iris": "1"}, ts=time.time()), "models_reported"
        )
        wait_for(
            lambda: query(db, "SELECT reported_models FROM devices WHERE id = ?", dev) == [('{"iris":"1"}',)]
        )
    assert query(db, "SELECT metrics FROM telemetry WHERE device = ?", dev) == [('{"cpu":0.25}',)]
    assert query(
        db,
        "SELECT c.state, r.ok FROM commands c JOIN command_replies r ON r.command_id = c.id "
        "WHERE c.device = ?",
        dev,
    ) == [("replied", 1)]


def test_two_ingest_roles_with_shared_subscriptions_store_every_result_once(
    tmp_path: Path, cloud_db: CloudDb
) -> None:
    db = cloud_db
    with run_broker(tmp_path / "broker") as broker:
        a = start_ingest(broker, db, tmp_path, "ingest-a", "--shared")
        with running(a), running(start_ingest(broker, db, tmp_path, "ingest-b", "--shared")) as b:
            expected: set[str] = set()
            with ExitStack() as stack:
                sims = [stack.enter_context(sim_device(broker, device_id())) for _ in range(3)]
                for i in range(30):
                    for sim in sims:
                        msg = results_msg(sim.device, [result_record() for _ in range(10)])
                        expected.update(r.id for r in msg.results)
                        sim.publish(msg, "results")
                        if i % 5 == 0:
                            sim.publish(msg, "results")  # a re-send: must not be stored twice
                wait_for(lambda: all(len(s.acked_ids()) == 300 for s in sims), 20, "every result acked")
            assert a.alive and b.alive
    assert (a.proc.returncode, b.proc.returncode) == (0, 0)  # SIGTERM: a clean stop
    assert "stopped: " in a.text()
    rows = query(db, "SELECT ingest, count(*) FROM results GROUP BY ingest")
    by_role = dict(rows)
    assert set(by_role) == {"ingest-a", "ingest-b"}, rows
    assert min(by_role.values()) > 50, rows  # both took a real share
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM results") == [(900, 900)]
    assert {r for (r,) in query(db, "SELECT id FROM results")} == expected


def test_ingest_resubscribes_after_a_broker_restart(tmp_path: Path, cloud_db: CloudDb) -> None:
    db = cloud_db
    with (
        run_broker(tmp_path / "broker") as broker,
        running(start_ingest(broker, db, tmp_path, "ingest-r")) as role,
    ):
        broker.restart()
        role.wait_log("disconnected from the broker")
        wait_for(lambda: role.text().count("connected to the broker 127.0.0.1") >= 2, 15, "a reconnect")
        dev = device_id()
        with sim_device(broker, dev) as device:
            record = result_record()
            msg = results_msg(dev, [record])

            def resend_until_acked() -> bool:  # as the device's outbox does
                if not device.acked_ids():
                    device.publish(msg, "results")
                    time.sleep(0.3)
                return device.acked_ids() == {record.id}

            wait_for(resend_until_acked, 10, "the ack after the restart")
        assert role.alive


def test_a_value_the_database_refuses_costs_its_result_or_message_only(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    """PostgreSQL cannot store a NUL character in text (SQLite can): a result holding one is named
    in ``rejected`` and the rest of its message stored; a status holding one is rejected alone.
    Before, on PostgreSQL, the database error failed the whole ingest batch, retried and dropped
    every message in it, and the device re-sent the poisoned result forever."""
    dev = device_id()
    good, nul = result_record(), result_record()
    nul = nul.model_copy(update={"source": "cam\x00era"})
    status = status_msg(dev).model_copy(update={"agent_version": "1.0\x00"})
    with sim_device(broker, dev) as device:
        device.publish(status, "status")  # in the same ingest batch as the results, most likely
        device.publish(results_msg(dev, [good, nul]), "results")
        wait_for(lambda: device.acks, timeout=10, what="the ack")
        assert device.acks[0].ids == [good.id]
        assert device.acks[0].rejected == [nul.id]
    assert count_results(db, dev) == 1
    assert query(db, "SELECT count(*) FROM status_history WHERE device = ?", dev)[0][0] == 0
    wait_for(lambda: "NUL character" in ingest.text(), timeout=5, what="the rejection logged")


def test_a_reply_postgresql_cannot_store_is_rejected_alone_and_the_batch_stored(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    """The ingest sends a batch's savepoints without waiting for the server; a value the database
    refuses (a NUL character in a command reply's error: PostgreSQL cannot store it, SQLite can)
    makes it store that batch again one message at a time: the reply alone is rejected, the
    results around it stored and acked."""
    dev = device_id()
    command = f"cmd-{dev}"
    store = Store(db)
    try:
        store.touch_devices({dev: time.time()})
        store.add_command(command, dev, "ping", {}, time.time())
    finally:
        store.close()
    before, after = result_record(), result_record()
    reply = protocol.CommandReply(device=dev, id=command, ok=False, error="no\x00pe", ts=time.time())
    with sim_device(broker, dev) as device:
        device.publish(results_msg(dev, [before]), "results")
        device.publish(reply, "cmd_reply")
        device.publish(results_msg(dev, [after]), "results")
        wait_for(lambda: len(device.acks) == 2, timeout=15, what="both acks")
        assert sorted(i for a in device.acks for i in a.ids) == sorted([before.id, after.id])
    assert count_results(db, dev) == 2
    replies = query(db, "SELECT count(*) FROM command_replies WHERE command_id = ?", command)[0][0]
    assert replies == (1 if isinstance(db, Path) else 0)
    if not isinstance(db, Path):
        wait_for(lambda: "NUL" in ingest.text(), timeout=5, what="the rejection logged")
