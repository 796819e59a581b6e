"""The device end of clock corrections on a real SQLite file: ``retention.correct_unsynced`` corrects
the results and queues the correction in the same transaction; ``sync.corrections`` sends it until
the cloud's ack removes it; the results' own sender reads past it. (Over a real broker and cloud:
tests/test_clock.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent.clock import ClockTrust, boot_id
from edge_agent.retention import correct_unsynced, prune
from edge_agent.storage import Storage
from edge_agent.sync import protocol
from edge_agent.sync.corrections import Corrections
from edge_agent.sync.outbox import UNSENDABLE, Outbox
from edge_agent.sync.settings import SyncConfig
from tests.device import fill, free_bytes, small_filesystem

DEV = "dev-1"


def _record(st: Storage, n: int, boot: str, boot_s0: float) -> list[str]:
    ids = []
    with st.transaction() as conn:
        for i in range(n):
            rid = st.record_result(conn, source="worker", model="iris", version="1", body={"i": i})
            conn.execute(
                "UPDATE results SET clock = 'unsynced', boot = ?, boot_s = ?, created = ? WHERE id = ?",
                (boot, boot_s0 + i, 86_400.0 + boot_s0 + i, rid),
            )
            ids.append(rid)
    return ids


def test_the_correction_is_queued_with_the_results_once_sent_until_acknowledged(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    old = _record(st, 2, "an-earlier-boot", 1.0)  # before a reboot: cannot be placed
    mine = _record(st, 3, boot_id(), 10.0)
    untrusted = ClockTrust(False, "1970", 86_500.0, 100.0)
    assert correct_unsynced(st, untrusted) == 0
    wall = time.time()
    trusted = ClockTrust(True, "synchronised", wall, 100.0)
    assert correct_unsynced(st, trusted) == 3
    assert correct_unsynced(st, trusted) == 0  # nothing left to correct: nothing queued again
    rows = {r[0]: r[1:] for r in st.conn.execute("SELECT id, clock, created, rowid FROM results")}
    assert all(rows[r][0] == "unsynced" for r in old)
    assert [rows[r][1] for r in mine] == [wall - 100.0 + 10.0 + i for i in range(3)]
    (queued,) = st.conn.execute("SELECT id, body FROM clock_corrections").fetchall()
    body = json.loads(queued[1])
    assert body == {
        "boot": boot_id(),
        "first_seq": rows[mine[0]][2],
        "last_seq": rows[mine[-1]][2],
        "count": 3,
        "boot_time": wall - 100.0,
        "ts": wall,
    }

    sent: list[bytes] = []
    corrections = Corrections(st, DEV, sent.append, lambda: 0.3)
    assert corrections.send_due() == 1 and corrections.send_due() == 0  # in flight
    kind, msg = protocol.decode(protocol.topic(DEV, "clock_correction"), sent[0])
    assert kind == "clock_correction" and isinstance(msg, protocol.ClockCorrection)
    assert (msg.id, msg.boot, msg.first_seq, msg.last_seq, msg.boot_time) == (
        queued[0],
        boot_id(),
        body["first_seq"],
        body["last_seq"],
        wall - 100.0,
    )
    time.sleep(0.35)
    assert corrections.send_due() == 1 and corrections.waiting == 1  # no ack in time: again
    assert Corrections(st, DEV, sent.append, lambda: 0.3).send_due() == 1  # a restart sends it again

    # the results' sender never sees it (never "unsendable"); one ack removes both kinds of entry
    results: list[bytes] = []
    outbox = Outbox(st, DEV, results.append, SyncConfig())
    assert outbox.send_due() == 5
    _, batch = protocol.decode(protocol.topic(DEV, "results"), results[0])
    assert isinstance(batch, protocol.Results)
    assert {r.id: r.boot for r in batch.results} == {
        **dict.fromkeys(old, "an-earlier-boot"),
        **dict.fromkeys(mine),
    }
    assert st.counter(UNSENDABLE) == 0
    outbox.acknowledge([msg.id, *old, *mine])
    corrections.acknowledged([msg.id])
    assert st.outbox_depth() == 0 and corrections.waiting == 0
    assert st.conn.execute("SELECT count(*) FROM clock_corrections").fetchone()[0] == 0
    time.sleep(0.35)
    assert corrections.send_due() == 0


def test_a_corrupt_correction_entry_is_logged_and_never_sent(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    with st.transaction() as conn:
        conn.execute(
            "INSERT INTO clock_corrections (id, body, created) VALUES ('clock:1:x', '{\"boot\": 1}', 0)"
        )
        st.bump(conn, "clock_corrections")
    sent: list[bytes] = []
    assert Corrections(st, DEV, sent.append, lambda: 0.3).send_due() == 0 and sent == []


def test_the_sync_role_corrects_queues_and_prunes_without_a_gateway(tmp_path: Path) -> None:
    """A device may run no gateway role (camera + sync; the gateway's keeper corrects and prunes):
    the sync role's keeper does both (retention_days 7 by default)."""
    from edge_agent.config import AgentConfig
    from edge_agent.sync.agent import SyncAgent
    from tests.sync.broker import free_port

    config = AgentConfig(device_id=DEV, data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    agent = SyncAgent(config, SyncConfig(broker_port=free_port()))
    mine = _record(agent.storage, 2, boot_id(), 3.0)
    old = _record(agent.storage, 3, boot_id(), 1.0)
    with agent.storage.transaction() as conn:  # recorded with a trusted clock 10 days ago, delivered
        marks = ",".join("?" * len(old))
        conn.execute(
            f"UPDATE results SET clock = NULL, created = ? WHERE id IN ({marks})",
            (time.time() - 864_000, *old),
        )
        conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", old)
    trusted = ClockTrust(True, "synchronised", time.time(), 50.0)  # whatever this machine's timesyncd says
    agent.keeper.trust = lambda: trusted
    pruned = agent.keeper.run_once()  # what its keeper thread runs (every CLOCK_CHECK_S, and hourly)
    assert pruned is not None and pruned.results == 3
    clocks = {r[0] for r in agent.storage.conn.execute("SELECT clock FROM results")}
    assert clocks == {"corrected"} and len(mine) == 2
    assert agent.storage.conn.execute("SELECT count(*) FROM clock_corrections").fetchone()[0] == 1
    metrics = agent.metrics()  # telemetry: the clock's state and what waits for the cloud
    assert metrics["clock_synced"] in (0.0, 1.0) and metrics["clock_corrections_waiting"] == 0.0  # none sent
    agent.storage.close()


def test_results_pruned_before_the_correction_is_sent_change_nothing_it_says(tmp_path: Path) -> None:
    """The correction carries all it needs (boot, range, boot start): retention may delete the
    results it covers (delivered, past their age) before it is sent, and it still goes out whole."""
    st = Storage.in_dir(tmp_path)
    mine = _record(st, 3, boot_id(), 10.0)
    wall = time.time()
    assert correct_unsynced(st, ClockTrust(True, "synchronised", wall, 100.0)) == 3
    (queued,) = st.conn.execute("SELECT body FROM clock_corrections").fetchall()
    Outbox(st, DEV, lambda _: None, SyncConfig()).acknowledge(mine)  # delivered
    assert prune(st, max_age_s=0.0, now=wall + 3600).results == 3  # and pruned
    assert st.conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    sent: list[bytes] = []
    assert Corrections(st, DEV, sent.append, lambda: 0.3).send_due() == 1
    _, msg = protocol.decode(protocol.topic(DEV, "clock_correction"), sent[0])
    assert isinstance(msg, protocol.ClockCorrection)
    assert msg.model_dump(exclude={"v", "device", "id"}) == json.loads(queued[0])


def test_an_acknowledged_correction_is_deleted_once_a_full_disk_has_room_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a 4 MiB tmpfs filled to 0 bytes free: the ack of a correction cannot be written (the
    delete needs WAL room); it is remembered, not sent again, nothing raises; once space returns
    the next pass deletes the row. The database stays intact."""
    with small_filesystem(tmp_path / "disk", 4) as disk:
        data = disk / "data"
        st = Storage.in_dir(data, floor_bytes=0, reserve_bytes=0)
        _record(st, 3, boot_id(), 10.0)
        assert correct_unsynced(st, ClockTrust(True, "synchronised", time.time(), 100.0)) == 3
        sent: list[bytes] = []
        corrections = Corrections(st, DEV, sent.append, lambda: 0.2)
        assert corrections.send_due() == 1
        (cid,) = [r[0] for r in st.conn.execute("SELECT id FROM clock_corrections")]
        st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write must grow the WAL
        ballast = disk / "ballast"
        fill(disk, ballast, 0)
        assert free_bytes(disk) < 4096
        corrections.acknowledged([cid])
        assert "acknowledged clock corrections not deleted yet" in caplog.text
        assert "disk is full" in caplog.text
        assert [r[0] for r in st.conn.execute("SELECT id FROM clock_corrections")] == [cid]
        time.sleep(0.3)  # past the ack timeout: still not sent again, and a pass raises nothing
        assert corrections.send_due() == 0 and corrections.waiting == 0 and len(sent) == 1
        assert st.conn.execute("SELECT count(*) FROM clock_corrections").fetchone()[0] == 1
        ballast.unlink()  # space returns
        assert corrections.send_due() == 0
        assert st.conn.execute("SELECT count(*) FROM clock_corrections").fetchone()[0] == 0
        assert st.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        st.close()
