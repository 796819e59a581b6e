"""Clock corrections (cloud_sync/store/clocks.py) through the real ingest role, a real mosquitto and
a device simulated on paho, on SQLite and on PostgreSQL: results delivered while the device's clock
was unsynced get their real time when its ClockCorrection arrives, before or after them, once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_sync.store import Store
from edge_agent.sync import protocol
from tests.cloud import Role, query, result_record, results_msg, running, sim_device, start_ingest, wait_for
from tests.conftest import CloudDb, make_cloud_db
from tests.sync.broker import Broker, run_broker

BOOT, OTHER_BOOT = str(uuid.uuid4()), str(uuid.uuid4())
COLUMNS = "created, received, time_flag, device_created, time_corrected, boot, boot_s, seq"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, db_backend: str) -> Path:
    return tmp_path_factory.mktemp(f"clock-{db_backend}")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[Broker]:
    with run_broker(workdir / "broker") as b:
        yield b


@pytest.fixture(scope="module")
def db(request: pytest.FixtureRequest, db_backend: str, workdir: Path) -> CloudDb:
    return make_cloud_db(request, db_backend, workdir)


@pytest.fixture(scope="module")
def ingest(broker: Broker, db: CloudDb, workdir: Path) -> Iterator[Role]:
    with running(start_ingest(broker, db, workdir, "ingest-clock")) as role:
        yield role


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
    outside = unsynced(14, 40.0)  # a later unsynced spell of the same boot: another correction's
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
    assert after[outside.id] == before[outside.id]
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
    beyond = unsynced(23, 3.5)  # recorded after that correction's range: not covered
    with sim_device(broker, dev) as device:
        msg = correction(dev, 20, 22, boot_time, count=2)
        device.publish(msg, "clock_correction")
        wait_for(lambda: any(a.ids == [msg.id] for a in device.acks), what="the correction's ack")
        device.publish(results_msg(dev, [*late, beyond]), "results")
        wait_for(lambda: device.acked_ids() >= {r.id for r in [*late, beyond]}, what="the late results")
    stored = rows(db, [*late, beyond])
    for r in late:
        created, received, flag, device_created, corrected, *_ = stored[r.id]
        expected = (boot_time + r.boot_s, "corrected", r.created, received)  # type: ignore[operator]
        assert (created, flag, device_created, corrected) == expected
    assert stored[beyond.id][2] == "unsynced" and stored[beyond.id][0] == stored[beyond.id][1]


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
