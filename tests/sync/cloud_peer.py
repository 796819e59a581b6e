"""A minimal cloud-side peer for the fleet-link tests, built on paho directly.

It stands in for ``cloud_sync``'s ingest: it subscribes to ``edge/+/results``,
stores every result by id in SQLite (idempotent: a re-sent result is counted
as a duplicate delivery, never stored twice), commits, and only then publishes
a ``ResultsAck``. A result whose body has ``"poison": true`` stands for one the cloud refuses
for good: it is named in the ack's ``rejected``. It also sends commands and collects replies, status and
telemetry, and can publish raw bytes on any topic.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.sync import protocol as p


class FakeCloud:
    def __init__(
        self,
        port: int,
        db_path: Path,
        *,
        client_id: str = "fake-cloud",
        delay_s: float = 0.0,
        v5: bool = False,
    ) -> None:
        self.port = port
        self.client_id = client_id
        self.delay_s = delay_s  # per results message: a slow ingest
        self.v5 = v5
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # commits survive a crash of this process; fast
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, device TEXT, body TEXT, deliveries INTEGER)"
        )
        self.lock = threading.Lock()
        self.replies: dict[str, list[tuple[p.CommandReply, bytes | None]]] = {}
        self.status: dict[str, p.Status] = {}
        self.telemetry: list[p.Telemetry] = []
        self.messages = 0
        self.client: paho.Client | None = None
        self.connected = threading.Event()

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> FakeCloud:
        if self.v5:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        else:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = self._on_message
        c.on_socket_open = _no_delay
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            c.connect_async("127.0.0.1", self.port, 30, clean_start=False, properties=props)
        else:
            c.connect_async("127.0.0.1", self.port, 30)
        c.loop_start()
        self.client = c
        if not self.connected.wait(timeout_s):
            raise RuntimeError("fake cloud could not connect")
        return self

    def stop(self) -> None:
        """Disconnect; the broker keeps the session and queues QoS 1 messages for it."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        self.connected.clear()

    def close(self) -> None:
        self.stop()
        self.db.close()

    # -- paho callbacks ------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(
            [(p.subscription(kind), 1) for kind in ("results", "cmd_reply", "status", "telemetry")]
        )
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            _, decoded = p.decode(msg.topic, bytes(msg.payload))
        except p.ProtocolError:
            return
        with self.lock:
            self.messages += 1
            if isinstance(decoded, p.Results):
                self._store(client, decoded)
            elif isinstance(decoded, p.CommandReply):
                corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
                self.replies.setdefault(decoded.id, []).append((decoded, corr))
            elif isinstance(decoded, p.Status):
                self.status[decoded.device] = decoded
            elif isinstance(decoded, p.Telemetry):
                self.telemetry.append(decoded)

    def _store(self, client: paho.Client, msg: p.Results) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        good = [r for r in msg.results if not r.body.get("poison")]
        refused = [r.id for r in msg.results if r.body.get("poison")]  # "invalid": never stored
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO results (id, device, body, deliveries) VALUES (?, ?, ?, 1) "
            "ON CONFLICT(id) DO UPDATE SET deliveries = deliveries + 1",
            [(r.id, msg.device, r.model_dump_json()) for r in good],
        )
        self.db.execute("COMMIT")  # stored first, acknowledged after
        ack = p.ResultsAck(device=msg.device, batch=msg.batch, ids=[r.id for r in good], rejected=refused)
        client.publish(p.topic(msg.device, "results_ack"), p.encode(ack), qos=1)

    # -- the store -------------------------------------------------------------------
    def stored_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT id FROM results")]

    def counts(self) -> tuple[int, int]:
        """(distinct results stored, deliveries including duplicates)."""
        with self.lock:
            row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(deliveries), 0) FROM results").fetchone()
        return int(row[0]), int(row[1])

    # -- sending -------------------------------------------------------------------------
    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def command(
        self,
        device: str,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        cid: str | None = None,
        correlation: bytes | None = None,
    ) -> str:
        cid = cid or uuid.uuid4().hex
        cmd = p.Command.model_validate(
            {"device": device, "id": cid, "name": name, "args": args or {}, "ts": time.time()}
        )
        props = None
        if self.v5 and correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
            props.ResponseTopic = p.topic(device, "cmd_reply")
        assert self.client is not None
        self.client.publish(p.topic(device, "cmd"), p.encode(cmd), qos=1, properties=props).wait_for_publish(
            5
        )
        return cid

    def reply(self, cid: str, timeout_s: float = 20.0, count: int = 1) -> p.CommandReply:
        wait_for(lambda: len(self.replies.get(cid, [])) >= count, timeout_s, f"reply to {cid}")
        return self.replies[cid][count - 1][0]


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):  # acks go out at once, not after the broker's delayed TCP ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
