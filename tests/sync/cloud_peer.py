"""The cloud end of the fleet-link tests: the REAL ingest, in this process.

``CloudPeer`` runs ``cloud_sync.ingest.Ingest`` over ``cloud_sync.mqtt.MqttLink`` and
``cloud_sync.store.Store`` (a real SQLite file): results are stored by id and acknowledged
after the commit, and what the cloud refuses for good is named in the ack's ``rejected``,
exactly as the ``cloud-sync ingest`` role does. The ingest keeps a persistent session
(``clean_start=False`` with a session expiry), so while it is stopped the broker queues for
it, as it would for an ingest that is down.

Beside it, an operator-side paho client (the test's eyes and the API's command sender) sends
commands and collects replies (with MQTT 5 correlation data), status and telemetry, and can
publish raw bytes on any topic.
"""

from __future__ import annotations

import socket
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

from cloud_sync.ingest import Ingest, IngestStats
from cloud_sync.mqtt import LinkOptions, MqttLink
from cloud_sync.store import Store
from edge_agent.sync import protocol as p

SESSION_EXPIRY_S = 3600


class SlowStore(Store):
    """The real store, with ``delay_s`` added to every results message: a slow cloud database."""

    def __init__(self, path: Path, delay_s: float, busy_timeout_s: float) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self.delay_s = delay_s

    def insert_results(self, msg: p.Results, received: float, ingest: str) -> tuple[list[str], list[str]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().insert_results(msg, received, ingest)


class CloudPeer:
    def __init__(
        self,
        port: int,
        db_path: Path,
        *,
        client_id: str = "cloud-ingest",
        delay_s: float = 0.0,
        v5: bool = False,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.port = port
        self.client_id = client_id
        self.v5 = v5  # the operator client's protocol (the ingest always speaks MQTT 5)
        self.store = SlowStore(db_path, delay_s, busy_timeout_s)
        self.ingest: Ingest | None = None
        self._link: MqttLink | None = None
        self._finished: list[IngestStats] = []
        self.lock = threading.Lock()
        self.replies: dict[str, list[tuple[p.CommandReply, bytes | None]]] = {}
        self.status: dict[str, p.Status] = {}
        self.telemetry: list[p.Telemetry] = []
        self.client: paho.Client | None = None
        self.connected = threading.Event()

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> CloudPeer:
        settings = LinkOptions(broker_host="127.0.0.1", broker_port=self.port)
        self._link = MqttLink(
            settings, self.client_id, manual_ack=True, clean_start=False, session_expiry_s=SESSION_EXPIRY_S
        )
        self.ingest = Ingest(self.store, self._link, name=self.client_id)
        self.ingest.start()
        self._link.start(wait_s=timeout_s)
        if not self._link.wait_subscribed(timeout_s):
            raise RuntimeError("the ingest's subscriptions were not acknowledged")
        self._start_operator(timeout_s)
        return self

    def _start_operator(self, timeout_s: float) -> None:
        cid = f"{self.client_id}-operator"
        if self.v5:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5)
        else:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = self._on_message
        c.on_socket_open = _no_delay
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            c.connect_async("127.0.0.1", self.port, 30, clean_start=False, properties=props)
        else:
            c.connect_async("127.0.0.1", self.port, 30)
        c.loop_start()
        self.client = c
        if not self.connected.wait(timeout_s):
            raise RuntimeError("the operator client could not connect")

    def stop(self) -> None:
        """Store and acknowledge what has arrived, then disconnect: the broker keeps the
        sessions and queues QoS 1 messages for them."""
        if self.ingest is not None:
            self.ingest.stop()
            self._finished.append(self.ingest.stats)
            self.ingest = None
        if self._link is not None:
            self._link.close()
            self._link = None
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        self.connected.clear()

    def close(self) -> None:
        self.stop()
        self.store.close()

    # -- the operator client's callbacks -----------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(p.subscription(kind), 1) for kind in ("cmd_reply", "status", "telemetry")])
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            _, decoded = p.decode(msg.topic, bytes(msg.payload))
        except p.ProtocolError:
            return
        with self.lock:
            if isinstance(decoded, p.CommandReply):
                corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
                self.replies.setdefault(decoded.id, []).append((decoded, corr))
            elif isinstance(decoded, p.Status):
                self.status[decoded.device] = decoded
            elif isinstance(decoded, p.Telemetry):
                self.telemetry.append(decoded)

    # -- the store -------------------------------------------------------------------
    def stats(self) -> list[IngestStats]:
        """The ingest's counters: one entry per start."""
        return [*self._finished, *([self.ingest.stats] if self.ingest is not None else [])]

    def stored_ids(self) -> list[str]:
        return [row["id"] for row in self.store._query("SELECT id FROM results")]

    def counts(self) -> tuple[int, int]:
        """(distinct results stored, results acknowledged including re-acknowledged re-sends)."""
        return self.store.count("results"), sum(s.results_acked for s in self.stats())

    # -- sending -------------------------------------------------------------------------
    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        if self.client is None:
            raise RuntimeError("not started")
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
        if self.client is None:
            raise RuntimeError("not started")
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
