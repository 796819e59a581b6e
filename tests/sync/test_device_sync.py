"""The device end of the fleet link, with real processes: the sync role as a
subprocess, a real mosquitto, the device's real SQLite file, and the real cloud
ingest (``CloudPeer`` runs ``cloud_sync.ingest`` on a real cloud SQLite file), which
stores results by id and acknowledges them.

"Exactly once in the cloud store" = every id recorded on the device is stored
once (the store is keyed by result id), whatever the number of deliveries.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.runtime.package import read_manifest, write_manifest
from edge_agent.storage import Storage
from edge_agent.sync import protocol as p
from edge_agent.sync.agent import SyncAgent
from edge_agent.sync.commands import HANDLERS
from edge_agent.sync.mqtt import Message, MqttError, MqttLink
from edge_agent.sync.outbox import Outbox
from edge_agent.sync.settings import SyncConfig, with_changes
from tests.conftest import MODELS, ROOT
from tests.sync.broker import Broker, free_port, run_broker
from tests.sync.cloud_peer import CloudPeer, wait_for

DEVICE = "dev-1"
FAST = {  # test timings: short ack timeout, quick reconnects
    "ack_timeout_s": "2",
    "reconnect_min_s": "1",
    "reconnect_max_s": "1",
    "poll_interval_s": "0.05",
}


class AgentProcess:
    """``python -m edge_agent.sync.agent`` as a child process; always stopped by the fixture."""

    def __init__(self, tmp: Path, port: int, **settings: str) -> None:
        self.tmp = tmp
        self.port = port
        self.settings = FAST | settings
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir = tmp / "data"
        self.model_dir = tmp / "models"

    def start(self, extra: list[str] | None = None) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env |= {f"EDGE_SYNC__{k.upper()}": v for k, v in self.settings.items()}
        env["PYTHONPATH"] = str(ROOT)
        argv = [
            sys.executable,
            "-m",
            "edge_agent.sync.agent",
            "--data-dir",
            str(self.data_dir),
            "--model-dir",
            str(self.model_dir),
            "--device-id",
            DEVICE,
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(self.port),
            *(extra or []),
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with run_broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def clouds() -> Iterator[list[CloudPeer]]:
    made: list[CloudPeer] = []
    yield made
    for c in made:
        c.close()


def storage(agent: AgentProcess) -> Storage:
    return Storage.in_dir(agent.data_dir)


def record(st: Storage, n: int, start: int = 0) -> list[str]:
    """What the other roles do: results written with their outbox entries."""
    ids = []
    with st.transaction() as conn:
        for i in range(start, start + n):
            ids.append(st.record_result(conn, source="test", model="iris", version="1", body={"i": i}))
    return ids


def assert_exactly_once(cloud: CloudPeer, ids: list[str]) -> int:
    """Every id stored once, nothing else stored; returns the duplicate deliveries."""
    stored = cloud.stored_ids()
    assert len(stored) == len(set(stored))
    assert set(stored) == set(ids)
    distinct, deliveries = cloud.counts()
    assert distinct == len(ids)
    return deliveries - distinct


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_store_and_forward_with_the_broker_stopped(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer], protocol: str
) -> None:
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    agent = AgentProcess(tmp_path, broker.port, protocol=protocol).start()
    agents.append(agent)
    wait_for(lambda: DEVICE in cloud.status, 15, "birth message")
    broker.stop()
    ids = record(storage(agent), 1000)
    time.sleep(1.0)
    assert agent.alive
    assert storage(agent).outbox_depth() == 1000
    broker.start()
    wait_for(lambda: cloud.counts()[0] == 1000, 30, "1000 results in the cloud store")
    wait_for(lambda: storage(agent).outbox_depth() == 0, 15, "acks to empty the outbox")
    assert_exactly_once(cloud, ids)
    assert agent.alive
    assert agent.terminate() == 0


# -- store and forward ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "overflow"),
    [
        pytest.param({}, False, id="batched"),
        # 1250 messages of 4 in flight: more than the broker queues for the offline cloud (1000)
        pytest.param({"batch_size": "4", "max_inflight_messages": "1250"}, True, id="broker-queue-overflows"),
    ],
)
def test_store_and_forward_with_the_cloud_ingest_down(
    tmp_path: Path,
    broker: Broker,
    agents: list[AgentProcess],
    clouds: list[CloudPeer],
    settings: dict[str, str],
    overflow: bool,
) -> None:
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    cloud.stop()  # the ingest is down; the broker keeps its session and queues (up to 1000) for it
    agent = AgentProcess(tmp_path, broker.port, **settings).start()
    agents.append(agent)
    ids = record(storage(agent), 5000)
    time.sleep(2.5)  # the agent sends what its window allows, gets no acks, re-sends after the timeout
    assert storage(agent).outbox_depth() == 5000  # PUBACKs from the broker removed nothing
    started = time.monotonic()
    cloud.start()
    wait_for(lambda: storage(agent).outbox_depth() == 0, 45, "the 5000-result backlog to drain")
    print(f"5000-result backlog drained in {time.monotonic() - started:.2f} s ({settings or 'defaults'})")
    assert_exactly_once(cloud, ids)
    log = (broker.workdir / "mosquitto.log").read_text()
    # with the overflow, only re-sends from the outbox can have brought the dropped messages' results
    assert ("Outgoing messages are being dropped for client cloud-ingest" in log) is overflow
    assert storage(agent).counter("outbox_delivered") == 5000
    assert agent.terminate() == 0


def test_broker_restarted_without_persistence_mid_drain(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    assert not broker.persistence
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3", delay_s=0.002).start()  # >= 1 s to drain
    clouds.append(cloud)
    agent = AgentProcess(tmp_path, broker.port, batch_size="10").start()
    agents.append(agent)
    wait_for(lambda: DEVICE in cloud.status, 15, "birth message")
    ids = record(storage(agent), 5000)
    wait_for(lambda: cloud.counts()[0] >= 1000, 30, "the drain to be under way")
    broker.restart()  # sessions, subscriptions and queued messages are gone
    assert cloud.counts()[0] < 5000, "drained before the restart: the test proved nothing"
    wait_for(lambda: storage(agent).outbox_depth() == 0, 60, "the drain to finish after the restart")
    assert_exactly_once(cloud, ids)
    assert "session present: False" in agent.output()
    assert agent.terminate() == 0


def test_agent_killed_with_sigkill_mid_drain(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3", delay_s=0.002).start()
    clouds.append(cloud)
    agent = AgentProcess(tmp_path, broker.port, batch_size="10")
    ids = record(storage(agent), 5000)
    agents.append(agent.start())
    wait_for(lambda: cloud.counts()[0] >= 2500, 30, "half of the results in the cloud")
    agent.kill()
    assert cloud.counts()[0] < 5000, "drained before the kill: the test proved nothing"
    wait_for(lambda: cloud.status[DEVICE].state == "offline", 10, "the Last Will")
    agent.start()
    wait_for(lambda: storage(agent).outbox_depth() == 0, 60, "the restarted agent to finish the drain")
    assert_exactly_once(cloud, ids)
    assert len(storage(agent).results(limit=10_000)) == 5000  # the device keeps its own copy
    assert agent.terminate() == 0


def test_a_puback_is_not_an_acknowledgement(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    agent = AgentProcess(tmp_path, broker.port).start()
    agents.append(agent)
    ids = record(storage(agent), 20)
    st = storage(agent)
    wait_for(lambda: st.conn.execute("SELECT MIN(attempts) FROM outbox").fetchone()[0] >= 2, 15, "a re-send")
    assert st.outbox_depth() == 20  # the broker took every message; no cloud stored them
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    wait_for(lambda: st.outbox_depth() == 0, 15, "delivery once a cloud listens")
    assert_exactly_once(cloud, ids)


def test_results_the_cloud_refuses_for_good_leave_the_outbox_counted(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    """Job ids are result ids, so two devices can collide: the real ingest refuses the id another
    device owns, names it in ``rejected``, and the agent stops re-sending it and counts it."""
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    taken = [f"job-{i}" for i in range(2)]
    owned = [
        p.ResultRecord(id=i, source="worker", model="iris", version="1", created=1.0, body={}) for i in taken
    ]
    cloud.store.record_results(p.Results(device="dev-2", batch="b0", results=owned), time.time(), "test")
    agent = AgentProcess(tmp_path, broker.port).start()
    agents.append(agent)
    st = storage(agent)
    ids = record(st, 8)
    with st.transaction() as conn:
        for rid in taken:
            st.record_result(conn, source="worker", model="iris", version="1", body={"i": 0}, result_id=rid)
    wait_for(lambda: st.outbox_depth() == 0, 15, "the outbox to empty")
    assert set(cloud.stored_ids()) == {*ids, *taken}
    assert (
        cloud.store._query("SELECT device FROM results WHERE id IN (?, ?)", taken)
        == [{"device": "dev-2"}] * 2
    )
    assert st.counter("outbox_rejected") == 2 and st.counter("outbox_delivered") == 8
    assert "the cloud refused 2 results for good" in agent.output()
    assert sum(s.results_refused for s in cloud.stats()) == 2
    sent = st.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert sent == 0 and agent.terminate() == 0


def test_a_cloud_store_that_keeps_failing_acknowledges_nothing(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    """Another writer holds the cloud database's write lock past the ingest's busy timeout on every
    attempt: the ingest gives up on the batch without an ack, the device keeps every entry and
    re-sends, and once the database is writable again everything arrives exactly once."""
    db = tmp_path / "cloud.sqlite3"
    cloud = CloudPeer(broker.port, db, busy_timeout_s=0.1).start()
    clouds.append(cloud)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        agent = AgentProcess(tmp_path, broker.port).start()
        agents.append(agent)
        st = storage(agent)
        ids = record(st, 20)
        wait_for(lambda: sum(s.dropped for s in cloud.stats()) >= 1, 20, "the ingest to give up a batch")
        wait_for(
            lambda: st.conn.execute("SELECT MIN(attempts) FROM outbox").fetchone()[0] >= 2, 15, "a re-send"
        )
        assert st.outbox_depth() == 20 and st.counter("outbox_delivered") == 0
        assert sum(s.results_acked for s in cloud.stats()) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: st.outbox_depth() == 0, 30, "delivery once the database is writable")
    assert_exactly_once(cloud, ids)
    assert st.counter("outbox_delivered") == 20 and st.counter("outbox_rejected") == 0


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", range(200, 300)), ("refuse_new", range(100))])
def test_a_full_outbox_follows_its_policy_and_counts_drops(
    tmp_path: Path, agents: list[AgentProcess], policy: str, kept: range
) -> None:
    agent = AgentProcess(tmp_path, free_port(), outbox_max_rows="100", on_full=policy).start()  # no broker
    agents.append(agent)
    st = storage(agent)
    ids = record(st, 300)
    wait_for(lambda: st.outbox_depth() == 100, 15, "the outbox bound")
    left = [r[0] for r in st.conn.execute("SELECT id FROM outbox ORDER BY seq")]
    assert left == [ids[i] for i in kept]
    assert st.counter("outbox_dropped") == 200
    assert len(st.results(limit=1000)) == 300  # results stay on the device; only forwarding is given up
    assert agent.alive
    assert agent.terminate() == 0


# -- status, telemetry ---------------------------------------------------------------------
def test_birth_will_and_clean_shutdown(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    agent = AgentProcess(tmp_path, broker.port, telemetry_interval_s="1").start()
    agents.append(agent)
    copy_iris(agent.model_dir)
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    wait_for(lambda: DEVICE in cloud.status, 15, "birth message")
    late = CloudPeer(broker.port, tmp_path / "late.sqlite3", client_id="late").start()
    clouds.append(late)
    wait_for(lambda: DEVICE in late.status, 5, "the retained birth message")
    assert late.status[DEVICE].state == "online"
    assert late.status[DEVICE].models == {"iris": "1"}

    record(storage(agent), 3)
    wait_for(lambda: len(cloud.telemetry) >= 2, 10, "telemetry")
    metrics = cloud.telemetry[-1].metrics
    for key in ("outbox_depth", "outbox_dropped", "results_recorded_per_s", "results_delivered_per_s"):
        assert key in metrics
    assert metrics["rss_bytes"] > 1e6
    assert metrics["models_active"] == 1

    agent.kill()  # unclean: the broker publishes the Last Will
    wait_for(lambda: cloud.status[DEVICE].state == "offline", 10, "the Last Will")
    agent.start()
    wait_for(lambda: cloud.status[DEVICE].state == "online", 15, "birth after restart")
    assert agent.terminate() == 0  # SIGTERM: offline published by the agent, clean disconnect
    wait_for(lambda: cloud.status[DEVICE].state == "offline", 5, "offline status on SIGTERM")
    assert "Traceback" not in agent.output()


# -- commands ------------------------------------------------------------------------------
def copy_iris(model_dir: Path, versions: tuple[str, ...] = ("1",)) -> None:
    for v in versions:
        dest = model_dir / "iris" / v
        shutil.copytree(MODELS / "iris" / "1", dest)
        if v != "1":
            write_manifest(dest, read_manifest(dest).model_copy(update={"version": v}))


def test_commands_get_replies_and_run_once(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    agent = AgentProcess(tmp_path, broker.port, password="s3cret-pw", username="dev-1")
    copy_iris(agent.model_dir, ("1", "2"))
    agents.append(agent.start())
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3", v5=True).start()
    clouds.append(cloud)
    wait_for(lambda: DEVICE in cloud.status, 15, "birth message")

    def call(name: str, args: dict[str, object] | None = None, cid: str | None = None) -> p.CommandReply:
        return cloud.reply(cloud.command(DEVICE, name, args, cid=cid))

    cid = cloud.command(DEVICE, "ping", correlation=b"corr-1")
    pong = cloud.reply(cid)
    assert pong.ok and pong.result and pong.result["pong"] is True
    assert cloud.replies[cid][0][1] == b"corr-1"  # MQTT 5 correlation data echoed

    status = call("status")
    assert status.ok and status.result is not None
    assert status.result["device"] == DEVICE and "outbox_depth" in status.result
    assert "password" not in status.result["settings"]
    assert "s3cret-pw" not in json.dumps(status.result) and "s3cret-pw" not in agent.output()

    listed = call("list_models")
    assert listed.ok and listed.result is not None
    assert listed.result["models"][0]["versions"] == ["1", "2"]

    activated = call("activate", {"model": "iris", "version": "1"})
    assert activated.ok, activated.error
    rolled_to_2 = call("activate", {"model": "iris", "version": "2"})
    assert rolled_to_2.ok, rolled_to_2.error
    wait_for(lambda: cloud.status[DEVICE].models == {"iris": "2"}, 10, "status with the new version")
    rolled = call("rollback", {"model": "iris"})
    assert rolled.ok and rolled.result is not None
    assert (rolled.result["version"], rolled.result["previous"]) == ("1", "2")
    missing = call("activate", {"model": "iris", "version": "9"})
    assert not missing.ok and missing.result == {"code": "version_not_found"}
    bad_args = call("activate", {"model": "iris"})
    assert not bad_args.ok and "version" in (bad_args.error or "")

    changed = call("set_config", {"telemetry_interval_s": 1, "log_level": "DEBUG"})
    assert changed.ok, changed.error
    wait_for(lambda: len(cloud.telemetry) >= 1, 10, "telemetry at the new interval")
    refused = call("set_config", {"broker_host": "elsewhere"})
    assert not refused.ok and "cannot change ['broker_host'] at run time" in (refused.error or "")
    invalid = call("set_config", {"batch_size": 0})
    assert not invalid.ok and "batch_size" in (invalid.error or "")

    unknown = cloud.command(DEVICE, "ping")  # then publish an unknown name with a known id
    cloud.reply(unknown)
    raw = {"v": 1, "device": DEVICE, "id": "cmd-unknown", "name": "reboot", "args": {}, "ts": time.time()}
    cloud.publish_raw(p.topic(DEVICE, "cmd"), json.dumps(raw).encode())
    err = cloud.reply("cmd-unknown")
    assert not err.ok and "unknown command 'reboot'" in (err.error or "")

    # run_batch twice with one id (a re-delivery): runs once, both deliveries get the same reply
    trigger = agent.data_dir / "batch.trigger"
    first = call("run_batch", {"items": "all"}, cid="batch-1")
    assert first.ok and json.loads(trigger.read_text())["args"] == {"items": "all"}
    trigger.unlink()
    cloud.command(DEVICE, "run_batch", {"items": "all"}, cid="batch-1")
    again = cloud.reply("batch-1", count=2)
    assert again == first
    assert not trigger.exists()
    # ... also after a restart: the executed ids are in SQLite
    assert agent.terminate() == 0
    agent.start()
    cloud.command(DEVICE, "run_batch", {"items": "all"}, cid="batch-1")
    assert cloud.reply("batch-1", count=3) == first
    assert not trigger.exists()
    assert agent.terminate() == 0


# -- hostile input -------------------------------------------------------------------------
GARBAGE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"not json at all {"),
    ("not utf-8", b"\xff\xfe\xfd"),
    ("json array", b"[1, 2, 3]"),
    ("json scalar", b"42"),
    ("deeply nested", b"[" * 5000 + b"]" * 5000),
    ("oversized", b'{"v": 1, "pad": "' + b"x" * (p.MAX_PAYLOAD_BYTES + 10) + b'"}'),
]


def _bad_docs(kind: str) -> list[tuple[str, dict[str, object]]]:
    good: dict[str, dict[str, object]] = {
        "cmd": {"v": 1, "device": DEVICE, "id": "c-{}", "name": "ping", "args": {}, "ts": 1.0},
        "results_ack": {"v": 1, "device": DEVICE, "batch": "b", "ids": ["nope"]},
        "models_desired": {"v": 1, "device": DEVICE, "deployment": "d", "models": [], "ts": 1.0},
    }
    base = good[kind]
    return [
        ("wrong schema version", base | {"v": 2}),
        ("no schema version", {k: v for k, v in base.items() if k != "v"}),
        ("wrong device", base | {"device": "dev-2"}),
        ("extra field", base | {"surprise": True}),
        ("wrong types", {k: ([] if k not in ("v", "device", "id") else v) for k, v in base.items()}),
    ]


def test_malformed_and_oversized_payloads_are_rejected_without_crashing(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    agent = AgentProcess(tmp_path, broker.port, telemetry_interval_s="1").start()
    agents.append(agent)
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    wait_for(lambda: DEVICE in cloud.status, 15, "birth message")
    sent = 0
    expected_replies = []
    for kind in ("cmd", "results_ack", "models_desired"):
        where = p.topic(DEVICE, kind)
        for _, payload in GARBAGE:
            cloud.publish_raw(where, payload, retain=kind == "models_desired")
            sent += 1
        for i, (_, bad) in enumerate(_bad_docs(kind)):
            doc = bad | {"id": f"bad-{i}"} if kind == "cmd" else bad
            if kind == "cmd":
                expected_replies.append(f"bad-{i}")
            cloud.publish_raw(where, json.dumps(doc).encode(), retain=kind == "models_desired")
            sent += 1
    cloud.publish_raw(p.topic(DEVICE, "cmd"), json.dumps({"v": 1, "name": "ping"}).encode())  # no id
    # every command whose id could be read got an error reply with the reason
    for cid in expected_replies:
        reply = cloud.reply(cid)
        assert not reply.ok and reply.error and reply.result == {"code": "protocol_error"}
    assert "schema version 2" in (cloud.reply("bad-0").error or "")
    assert "names device 'dev-2'" in (cloud.reply("bad-2").error or "")
    # ... and the agent is still working: commands, results, acks
    assert cloud.reply(cloud.command(DEVICE, "ping")).ok
    ids = record(storage(agent), 10)
    wait_for(lambda: storage(agent).outbox_depth() == 0, 15, "delivery after the garbage")
    assert_exactly_once(cloud, ids)
    wait_for(
        lambda: bool(cloud.telemetry) and cloud.telemetry[-1].metrics["messages_rejected"] >= sent - 2,
        10,
        "the rejections counted",
    )
    assert agent.alive
    out = agent.output()
    assert "rejected" in out and "over 262144" in out and "not JSON" in out
    assert "Traceback" not in out
    assert agent.terminate() == 0


# -- the pieces, in-process ----------------------------------------------------------------
def test_mqtt_link_guards_handlers_unsubscribes_and_resubscribes(tmp_path: Path, broker: Broker) -> None:
    settings = SyncConfig(broker_port=broker.port, broker_host="127.0.0.1", reconnect_max_s=1)
    got: list[str] = []

    def bad(m: Message) -> None:
        raise RuntimeError("a broken handler")

    link = MqttLink(settings, "link-test")
    link.subscribe("t/#", bad)
    unsubscribe = link.subscribe("t/#", lambda m: got.append(m.payload.decode()))
    link.start()
    try:
        assert link.wait_connected(10)
        link.publish("t/a", b"one").wait(5)
        wait_for(lambda: got == ["one"], 5, "delivery despite the broken handler")
        broker.restart()  # no persistence: the subscription must be renewed by the client
        wait_for(lambda: not link.connected, 5, "the disconnect")
        assert link.wait_connected(15)
        link.publish("t/b", b"two").wait(5)
        wait_for(lambda: got == ["one", "two"], 5, "delivery after the broker restart")
        unsubscribe()
        link.publish("t/c", b"three").wait(5)
        time.sleep(0.3)
        assert got == ["one", "two"]
    finally:
        link.stop()


def _outbox(tmp_path: Path, **settings: object) -> tuple[Storage, list[bytes], Outbox]:
    st = Storage.in_dir(tmp_path / "data")
    sent: list[bytes] = []
    box = Outbox(st, DEVICE, sent.append, SyncConfig.model_validate(settings))
    return st, sent, box


def test_outbox_window_timeout_and_acks(tmp_path: Path) -> None:
    st, sent, box = _outbox(tmp_path, batch_size=10, max_inflight_messages=2, ack_timeout_s=0.3)
    ids = record(st, 50)
    assert box.send_due() == 20 and len(sent) == 2
    assert box.send_due() == 0  # window full
    first = p.decode(p.topic(DEVICE, "results"), sent[0])[1]
    assert isinstance(first, p.Results) and [r.id for r in first.results] == ids[:10]
    assert box.acknowledge([*ids[:10], "unknown-id"]) == 10
    assert st.outbox_depth() == 40 and st.counter("outbox_delivered") == 10
    assert box.send_due() == 10  # one message of room: ids[20:30]
    time.sleep(0.35)
    assert box.send_due() == 20  # timed out: ids[10:20] and ids[20:30] again
    again = p.decode(p.topic(DEVICE, "results"), sent[-2])[1]
    assert isinstance(again, p.Results) and [r.id for r in again.results] == ids[10:20]
    attempts = dict(st.conn.execute("SELECT id, attempts FROM outbox").fetchall())
    assert attempts[ids[10]] == 2 and attempts[ids[40]] == 0


def test_outbox_splits_big_batches_and_gives_up_on_unsendable_entries(tmp_path: Path) -> None:
    st, sent, box = _outbox(tmp_path, batch_size=100)
    big = "x" * (p.MAX_PAYLOAD_BYTES // 3)
    with st.transaction() as conn:
        ok = [
            st.record_result(conn, source="t", model="m", version="1", body={"blob": big}) for _ in range(4)
        ]
        huge = st.record_result(conn, source="t", model="m", version="1", body={"blob": big * 4})
        conn.execute("UPDATE outbox SET body = '{\"id\": 1}' WHERE id = ?", (ok[0],))  # corrupt
    assert box.send_due() == 3
    assert all(len(m) <= p.MAX_PAYLOAD_BYTES for m in sent) and len(sent) >= 2
    assert st.counter("outbox_unsendable") == 2
    left = {r[0] for r in st.conn.execute("SELECT id FROM outbox")}
    assert left == set(ok[1:]) and huge not in left
    assert st.result(huge).id == huge  # still on the device


def test_session_lost_makes_unacknowledged_entries_due_at_once(tmp_path: Path) -> None:
    st, _, box = _outbox(tmp_path, batch_size=5, ack_timeout_s=600)
    record(st, 5)
    assert box.send_due() == 5
    box.reset_window(resend_now=False)
    assert box.send_due() == 0  # the broker kept the session: wait for acks
    box.reset_window(resend_now=True)
    assert box.send_due() == 5


def test_every_command_has_a_handler() -> None:
    assert set(HANDLERS) == set(get_args(p.CommandName))


def test_sync_settings_from_the_environment() -> None:
    env = {"EDGE_SYNC__BATCH_SIZE": "1", "EDGE_SYNC__ON_FULL": "refuse_new", "HOME": "/"}
    s = load_config(env=env).sync
    assert (s.batch_size, s.on_full) == (1, "refuse_new")
    with pytest.raises(ConfigError) as err:
        load_config(env={"EDGE_SYNC__BATCH_SIZE": "501", "EDGE_SYNC__BATCH_SIZ": "1", "EDGE_SYNC__NOPE": "1"})
    problems = err.value.problems
    assert (
        "unknown environment variable EDGE_SYNC__BATCH_SIZ; did you mean EDGE_SYNC__BATCH_SIZE?" in problems
    )
    assert any(p.startswith("unknown environment variable EDGE_SYNC__NOPE; known: ") for p in problems)
    assert "sync.batch_size: Input should be less than or equal to 500 (got '501')" in problems
    with pytest.raises(ConfigError):
        with_changes(s, {"ack_timeout_s": -1})
    assert with_changes(s, {"ack_timeout_s": 5}).ack_timeout_s == 5


def test_the_sync_role_imports_no_inference_runtime(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from edge_agent.config import AgentConfig\n"
        "from edge_agent.sync.agent import SyncAgent\n"
        "from edge_agent.sync.settings import SyncConfig\n"
        f"a = SyncAgent(AgentConfig(device_id='d', data_dir={str(tmp_path)!r}, model_dir={str(MODELS)!r}),"
        " SyncConfig())\n"
        "assert a.active_models()\n"
        "a.status(); a.metrics()\n"
        "print(sorted(m for m in ('onnxruntime', 'cv2', 'ai_edge_litert', 'fastapi') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_drain_mode_exits_once_the_outbox_is_acknowledged(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    cloud = CloudPeer(broker.port, tmp_path / "cloud.sqlite3").start()
    clouds.append(cloud)
    agent = AgentProcess(tmp_path, broker.port)
    agents.append(agent)
    ids = record(storage(agent), 250)
    agent.start(extra=["--drain"])
    assert agent.proc is not None and agent.proc.wait(20) == 0
    assert storage(agent).outbox_depth() == 0
    assert_exactly_once(cloud, ids)


# -- TLS and credentials -------------------------------------------------------------------
def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class TlsBroker(Broker):
    """A TLS listener with a password file for devices, and a plain anonymous one for the cloud ingest."""

    plain_port: int = 0

    def _config(self) -> Path:
        ca, cert, key = _tls_files(self.workdir / "tls")
        passwd = self.workdir / "passwd"
        passwd.write_text("dev-1:right-password\n")
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"user {getpass.getuser()}",  # as root, mosquitto would switch to a user who cannot read tmp
                    "per_listener_settings true",
                    "persistence false",
                    "log_dest stderr",
                    f"listener {self.port} 127.0.0.1",
                    f"cafile {ca}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    "allow_anonymous false",
                    f"password_file {passwd}",
                    f"listener {self.plain_port} 127.0.0.1",
                    "allow_anonymous true",
                ]
            )
            + "\n"
        )
        return conf


def test_tls_with_username_and_password(
    tmp_path: Path, agents: list[AgentProcess], clouds: list[CloudPeer]
) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = TlsBroker("127.0.0.1", free_port(), workdir)
    broker.plain_port = free_port()
    broker.start()
    try:
        cloud = CloudPeer(broker.plain_port, tmp_path / "cloud.sqlite3").start()
        clouds.append(cloud)
        tls = {"tls": "true", "ca_file": str(workdir / "tls" / "ca.pem"), "username": "dev-1"}
        agent = AgentProcess(tmp_path, broker.port, **tls, password="wrong-password").start()
        agents.append(agent)
        wait_for(lambda: "refused the connection" in agent.output(), 10, "the refusal")
        assert agent.alive and DEVICE not in cloud.status
        assert agent.terminate() == 0
        agent.settings["password"] = "right-password"
        agent.start()
        wait_for(lambda: DEVICE in cloud.status, 15, "birth over TLS")
        ids = record(storage(agent), 20)
        wait_for(lambda: storage(agent).outbox_depth() == 0, 15, "delivery over TLS")
        assert_exactly_once(cloud, ids)
        assert agent.terminate() == 0
        assert "password" not in agent.output()
    finally:
        broker.stop()


def test_a_bad_tls_setting_is_an_mqtt_error(tmp_path: Path) -> None:
    settings = SyncConfig(tls=True, ca_file=tmp_path / "missing.pem")
    with pytest.raises(MqttError, match="cannot set up TLS"):
        MqttLink(settings, DEVICE)


def test_the_agent_publishes_only_device_to_cloud_kinds(tmp_path: Path) -> None:
    config = AgentConfig(device_id=DEVICE, data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    agent = SyncAgent(config, SyncConfig(broker_port=free_port()))
    with pytest.raises(p.ProtocolError, match="from the cloud to devices"):
        agent.publish("cmd", p.Command(device=DEVICE, id="c", name="ping", ts=1.0))
