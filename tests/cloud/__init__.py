"""Helpers for the cloud_sync tests: real processes (ingest, API) and a simulated
device built directly on paho, speaking the wire contract of edge_agent.sync.protocol."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.sync import protocol
from tests.conftest import CloudDb, PgUrl
from tests.sync.broker import Broker

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def state_dir(db: CloudDb) -> Path:
    """Where the cloud keeps its other files (artifacts/, trust/): beside db_path, on PostgreSQL too."""
    return db.state_dir if isinstance(db, PgUrl) else db.parent


def cloud_env(broker: Broker, db: CloudDb, **settings: str) -> dict[str, str]:
    """The environment of a cloud role: an SQLite file (CLOUD_DB_PATH) or PostgreSQL (CLOUD_DB_URL,
    with CLOUD_DB_PATH naming the directory artifacts go to)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")}
    env |= {
        "CLOUD_BROKER_HOST": broker.host,
        "CLOUD_BROKER_PORT": str(broker.port),
        "PYTHONPATH": str(ROOT),
    }
    if isinstance(db, PgUrl):
        env |= {"CLOUD_DB_URL": str(db), "CLOUD_DB_PATH": str(db.state_dir / "cloud.sqlite3")}
    else:
        env["CLOUD_DB_PATH"] = str(db)
    env |= {f"CLOUD_{k.upper()}": v for k, v in settings.items()}
    return env


class Role:
    """``python -m cloud_sync.cli <args>`` as a child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_sync.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=self._out,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.text()}")
            return needle in self.text()

        wait_for(seen, timeout, f"{needle!r} in {self.log.name}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@contextmanager
def running(role: Role) -> Iterator[Role]:
    try:
        yield role
    finally:
        role.stop()


def start_ingest(broker: Broker, db: CloudDb, workdir: Path, name: str, *extra: str) -> Role:
    env = cloud_env(broker, db, ingest_client_id=name, ingest_max_batch="64")
    role = Role(["ingest", *extra], env, workdir / f"{name}.log")
    try:
        role.wait_log("ready: subscribed")
    except BaseException:
        role.stop()
        raise
    return role


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(db: CloudDb, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows as tuples, straight from the database (not through the store), on either backend."""
    if isinstance(db, PgUrl):
        import psycopg

        from cloud_sync.store.backends import pg_sql

        with psycopg.connect(str(db), autocommit=True) as pg:
            cur = pg.execute(pg_sql(sql), params)
            return [] if cur.description is None else [tuple(row) for row in cur.fetchall()]
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- the simulated device ------------------------------------------------------------------------
class SimDevice:
    """A device on paho (MQTT 5): publishes protocol payloads, collects results acks and commands."""

    def __init__(self, broker: Broker, device: str, *, will: bool = False) -> None:
        self.device = device
        self.acks: list[protocol.ResultsAck] = []
        self.commands: list[tuple[protocol.Command, paho.MQTTMessage]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{device}", protocol=paho.MQTTv5
        )
        if will:
            offline = protocol.Status(device=device, state="offline", ts=time.time())
            self.client.will_set(
                protocol.topic(device, "status"), protocol.encode(offline), qos=1, retain=True
            )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(
            [(protocol.topic(device, "results_ack"), 1), (protocol.topic(device, "cmd"), 1)]
        )
        if not self._subscribed.wait(5):
            raise AssertionError("simulated device: no SUBACK")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        _, decoded = protocol.decode(msg.topic, bytes(msg.payload))
        with self._lock:
            if isinstance(decoded, protocol.ResultsAck):
                self.acks.append(decoded)
            elif isinstance(decoded, protocol.Command):
                self.commands.append((decoded, msg))

    def publish(self, msg: protocol._Msg, kind: str, *, retain: bool = False) -> None:
        self.publish_raw(protocol.topic(self.device, kind), protocol.encode(msg), retain=retain)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def acked_ids(self) -> set[str]:
        with self._lock:
            return {i for ack in self.acks for i in ack.ids}

    def kill_socket(self) -> None:
        """Die without a DISCONNECT: the broker publishes the Last Will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def sim_device(broker: Broker, device: str, *, will: bool = False) -> Iterator[SimDevice]:
    dev = SimDevice(broker, device, will=will)
    try:
        yield dev
    finally:
        dev.close()


# -- payload builders ----------------------------------------------------------------------------
def result_record(
    model: str = "iris", label: str = "setosa", created: float | None = None
) -> protocol.ResultRecord:
    return protocol.ResultRecord(
        id=uuid.uuid4().hex,
        source="test",
        model=model,
        version="1",
        created=time.time() if created is None else created,
        body={"label": label, "score": 0.9},
    )


def results_msg(
    device: str, records: list[protocol.ResultRecord], batch: str | None = None
) -> protocol.Results:
    return protocol.Results(device=device, batch=batch or uuid.uuid4().hex, results=records)


def status_msg(device: str, state: Literal["online", "offline"] = "online") -> protocol.Status:
    return protocol.Status(
        device=device, state=state, agent_version="0.1.0", models={"iris": "1"}, ts=time.time()
    )
