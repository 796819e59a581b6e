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


def test_a_device_back_in_1970_has_its_telemetry_stored_at_arrival_and_flagged(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    """Through the ingest process: the snapshot of a Pi rebooted without its clock is the newest."""
    dev = device_id()
    with sim_device(broker, dev) as device:
        device.publish(protocol.Telemetry(device=dev, ts=time.time() - 60, metrics={"cpu": 0.1}), "telemetry")
        wait_for(
            lambda: query(db, "SELECT 1 FROM telemetry WHERE device = ?", dev), what="the first snapshot"
        )
        t0 = time.time()
        device.publish(protocol.Telemetry(device=dev, ts=86_400.0, metrics={"cpu": 0.9}), "telemetry")
        wait_for(
            lambda: len(query(db, "SELECT 1 FROM telemetry WHERE device = ?", dev)) == 2, what="the 1970 one"
        )
    rows = query(
        db,
        "SELECT ts, received, time_flag, device_ts, metrics FROM telemetry WHERE device = ? ORDER BY ts DESC",
        dev,
    )
    ts, received, flag, device_ts, metrics = rows[0]
    assert (ts, flag, device_ts, metrics) == (received, "implausible", 86_400.0, '{"cpu":0.9}') and ts >= t0
    assert rows[1][2:4] == (None, None)
    store = Store(db)
    try:
        assert store.latest_metrics([dev]) == {dev: '{"cpu":0.9}'}
    finally:
        store.close()


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


# -- clock corrections (cloud_sync/store/clocks.py): results delivered while the device's clock was
# unsynced get their real time when its ClockCorrection arrives, before or after them, once
BOOT, OTHER_BOOT = str(uuid.uuid4()), str(uuid.uuid4())
COLUMNS = "created, received, time_flag, device_created, time_corrected, boot, boot_s, seq"


def unsynced(seq: int, boot_s: float, boot: str = BOOT) -> protocol.ResultRecord:
    """Recorded in 1970 + boot_s (a Pi that booted without a clock), marked by the device."""
    update = {"seq": seq, "clock": "unsynced", "boot": boot, "boot_s": boot_s}
    return result_record(created=86_400.0 + boot_s).model_copy(update=update)


def correction(
    device: str, first: int, last: int, boot_time: float, **changes: object
) -> protocol.ClockCorrection:
    fields: dict[str, object] = {"id": f"clock:{first}:{BOOT}", "boot": BOOT, "first_seq": first}
    fields |= {"last_seq": last, "count": last - first + 1, "boot_time": boot_time, "ts": time.time() - 5}
    return protocol.ClockCorrection.model_validate({"device": device, **fields, **changes})


def rows(db: CloudDb, records: list[protocol.ResultRecord]) -> dict[str, tuple[object, ...]]:
    marks = ",".join("?" * len(records))
    found = query(db, f"SELECT id, {COLUMNS} FROM results WHERE id IN ({marks})", *[r.id for r in records])
    return {str(r[0]): tuple(r[1:]) for r in found}


def test_a_correction_gives_delivered_results_their_time_once_and_keeps_the_device_time(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    fixed = [unsynced(seq, boot_s) for seq, boot_s in ((11, 10.25), (12, 20.5), (13, 30.75))]
    earlier_boot = unsynced(10, 5.0, OTHER_BOOT)  # rebooted before NTP: nothing can place it
    outside = unsynced(14, 40.0)  # a later spell of the same boot: placed by this boot's correction too
    synced = result_record().model_copy(update={"seq": 15})
    sent = [earlier_boot, *fixed, outside, synced]
    boot_time = time.time() - 3600.0
    with sim_device(broker, dev) as device:
        device.publish(results_msg(dev, sent), "results")
        wait_for(lambda: device.acked_ids() == {r.id for r in sent}, what="the results stored")
        before = rows(db, sent)
        assert all(before[r.id][2] == "unsynced" and before[r.id][0] == before[r.id][1] for r in fixed)
        msg = correction(dev, 11, 13, boot_time)
        for _ in range(2):  # the device may send it twice (no ack seen before a restart)
            device.publish(msg, "clock_correction")
        wait_for(lambda: sum(a.ids == [msg.id] for a in device.acks) == 2, what="two acks of the correction")
        # the same id with another time (a bug, or replayed): the kept correction wins, nothing moves
        device.publish(correction(dev, 11, 13, boot_time + 99.0), "clock_correction")
        wait_for(lambda: sum(a.ids == [msg.id] for a in device.acks) == 3, what="a third ack")
    after = rows(db, sent)
    for r in fixed:
        created, received, flag, device_created, corrected, boot, boot_s, seq = after[r.id]
        assert created == boot_time + r.boot_s  # type: ignore[operator]  # the device's own sum, exactly
        assert (flag, device_created, boot, boot_s, seq) == ("corrected", r.created, BOOT, r.boot_s, r.seq)
        assert corrected is not None and float(corrected) >= float(received)  # type: ignore[arg-type]
    assert after[earlier_boot.id] == before[earlier_boot.id]  # stays flagged unsynced
    assert after[outside.id][:4] == (boot_time + 40.0, before[outside.id][1], "corrected", outside.created)
    assert after[synced.id][2:5] == (None, None, None) and after[synced.id][0] == synced.created
    kept = query(
        db, "SELECT boot, first_seq, last_seq, count, boot_time FROM clock_corrections WHERE device = ?", dev
    )
    assert kept == [(BOOT, 11, 13, 3, boot_time)]
    store = Store(db)  # what GET /results/{id} answers: the flag, the device's time, when corrected
    try:
        shown = store.result(fixed[0].id)
    finally:
        store.close()
    assert shown["time_flag"] == "corrected" and shown["device_created"] == fixed[0].created
    assert shown["created"] - shown["device_created"] == boot_time + 10.25 - (86_400.0 + 10.25)


def test_results_that_arrive_after_their_correction_are_corrected_as_they_are_stored(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    boot_time = time.time() - 7200.0
    late = [unsynced(21, 1.5), unsynced(22, 2.5)]  # sent unsynced, overtaken by the correction
    beyond = unsynced(23, 3.5)  # recorded after that correction's range: placed by it all the same
    with sim_device(broker, dev) as device:
        msg = correction(dev, 20, 22, boot_time, count=2)
        device.publish(msg, "clock_correction")
        wait_for(lambda: any(a.ids == [msg.id] for a in device.acks), what="the correction's ack")
        device.publish(results_msg(dev, [*late, beyond]), "results")
        wait_for(lambda: device.acked_ids() >= {r.id for r in [*late, beyond]}, what="the late results")
    stored = rows(db, [*late, beyond])
    for r in [*late, beyond]:
        created, received, flag, device_created, corrected, *_ = stored[r.id]
        expected = (boot_time + r.boot_s, "corrected", r.created, received)  # type: ignore[operator]
        assert (created, flag, device_created, corrected) == expected


def test_a_lost_correction_is_made_up_for_by_a_later_one_of_the_same_boot(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    """Results whose own correction never reached the cloud are placed by any other correction of
    their boot (boot_s counts from the same boot start); at insert a result takes its own range's
    correction first, else the newest of its boot; a correction arriving late moves nothing."""
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    first_spell, second_spell = [unsynced(41, 1.0), unsynced(42, 2.0)], [unsynced(43, 3.0)]
    t_a, t_b, t_c = time.time() - 900.0, time.time() - 899.5, time.time() - 899.0  # NTP slew
    with sim_device(broker, dev) as device:
        device.publish(results_msg(dev, [*first_spell, *second_spell]), "results")
        wait_for(lambda: len(device.acked_ids()) == 3, what="the results stored")
        lost = correction(dev, 41, 42, t_a)  # e.g. never sent: the cloud sees only the next one
        second = correction(dev, 43, 43, t_b, ts=time.time() - 6)
        device.publish(second, "clock_correction")
        wait_for(lambda: any(a.ids == [second.id] for a in device.acks), what="the second correction's ack")
        stored = rows(db, [*first_spell, *second_spell])
        for r in [*first_spell, *second_spell]:
            assert stored[r.id][:4:2] == (t_b + r.boot_s, "corrected")  # type: ignore[operator]
        device.publish(lost, "clock_correction")  # arrives after all: nothing moves
        wait_for(lambda: any(a.ids == [lost.id] for a in device.acks), what="the late correction's ack")
        assert rows(db, [*first_spell, *second_spell]) == stored
        # arriving after several corrections: its own range's first, else the newest of its boot
        newest = correction(dev, 44, 44, t_c, ts=time.time() - 4)
        device.publish(newest, "clock_correction")
        wait_for(lambda: any(a.ids == [newest.id] for a in device.acks), what="the newest correction's ack")
        own, unknown_range = unsynced(41, 1.0), unsynced(60, 9.0)  # re-sent under another id; a later spell
        device.publish(results_msg(dev, [own, unknown_range]), "results")
        wait_for(lambda: device.acked_ids() >= {own.id, unknown_range.id}, what="the late results")
    late = rows(db, [own, unknown_range])
    assert late[own.id][:4:2] == (t_a + 1.0, "corrected")
    assert late[unknown_range.id][:4:2] == (t_c + 9.0, "corrected")


def test_a_malformed_or_implausible_correction_is_rejected_with_the_reason_and_changes_nothing(
    ingest: Role, broker: Broker, db: CloudDb
) -> None:
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    flagged = [unsynced(31, 4.0), unsynced(32, 5.0)]
    with sim_device(broker, dev) as device:
        device.publish(results_msg(dev, flagged), "results")
        wait_for(lambda: device.acked_ids() == {r.id for r in flagged}, what="the results stored")
        before = rows(db, flagged)
        topic = protocol.topic(dev, "clock_correction")
        good = correction(dev, 31, 32, time.time() - 600).model_dump()
        device.publish_raw(topic, protocol.encode(correction(dev, 31, 32, 1.0e9, ts=1.0e9)))  # 2001
        wait_for(lambda: any(a.rejected == [good["id"]] for a in device.acks), what="the refusal in an ack")
        ingest.wait_log("its ts 1000000000.0 is not a plausible time")
        device.publish_raw(topic, protocol.encode(correction(dev, 31, 32, time.time() + 30)))  # after its ts
        ingest.wait_log("is not between 2020 and its ts")
        device.publish_raw(topic, json.dumps(good | {"last_seq": 30}).encode())  # decodes to nothing
        ingest.wait_log("last_seq 30 is below first_seq 31")
        device.publish_raw(topic, json.dumps(good | {"device": "someone-else"}).encode())
        ingest.wait_log("but was published under")
        # the wrong device's own correction (same boot, same seqs) touches only its own results
        with sim_device(broker, f"{dev}-x") as other:
            other.publish(correction(f"{dev}-x", 31, 32, time.time() - 600), "clock_correction")
            wait_for(lambda: len(other.acks) == 1 and other.acks[0].ids != [], what="the other's ack")
    assert rows(db, flagged) == before
    assert query(db, "SELECT count(*) FROM clock_corrections WHERE device = ?", dev) == [(0,)]
