"""Helpers for the dashboard tests: the cloud API (with a dashboard login) as a real process, and
simulated devices on paho that publish status (with a Last Will), telemetry and results, and reply
to commands like an agent does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho

from cloud_sync.dashboard.auth import hash_password
from edge_agent.sync import protocol
from tests.cloud import (
    Role,
    SimDevice,
    cloud_env,
    free_port,
    result_record,
    results_msg,
    status_msg,
    wait_for,
)
from tests.conftest import CloudDb
from tests.sync.broker import Broker

USER = "operator"
PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)


@contextmanager
def api_role(broker: Broker, db: CloudDb, workdir: Path, **settings: str) -> Iterator[str]:
    """``cloud-sync api`` with the dashboard login configured (``settings`` override); yields its base URL."""
    port = free_port()
    defaults = {
        "dashboard_user": USER,
        "dashboard_password_hash": PASSWORD_HASH,
        "session_secret": "test-session-secret",
        "log_level": "WARNING",
    }
    env = cloud_env(broker, db, api_port=str(port), **(defaults | settings))
    role = Role(["api"], env, workdir / "api.log")
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not role.alive:
            raise AssertionError(f"api exited:\n{role.text()}")
        try:
            return httpx.get(f"{base}/health", timeout=1).json()["broker_connected"] is True
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 20, "the API")
        yield base
    finally:
        role.stop()


def logged_in(base: str) -> httpx.Client:
    """An HTTP client holding a dashboard session; ``.headers['X-CSRF-Token']`` set."""
    client = httpx.Client(base_url=base, timeout=20)
    r = client.post("/dashboard/login", data={"user": USER, "password": PASSWORD})
    if r.status_code != 303:
        raise AssertionError(f"login failed: {r.status_code} {r.text}")
    client.headers["X-CSRF-Token"] = client.get("/dashboard/session").json()["csrf_token"]
    return client


class Device(SimDevice):
    """A simulated agent: retained online status with an offline Last Will; replies to commands."""

    def __init__(self, broker: Broker, device: str) -> None:
        super().__init__(broker, device, will=True)
        self.publish(status_msg(self.device), "status", retain=True)
        self.telemetry(outbox_depth=3)
        self.telemetry(outbox_depth=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        super()._on_message(client, userdata, msg)
        _, decoded = protocol.decode(msg.topic, bytes(msg.payload))
        if isinstance(decoded, protocol.Command):
            result = {"pong": True} if decoded.name == "ping" else {"ran": decoded.name, "items": 0}
            reply = protocol.CommandReply(
                device=self.device, id=decoded.id, ok=True, result=result, ts=time.time()
            )
            client.publish(protocol.topic(self.device, "cmd_reply"), protocol.encode(reply), qos=1)

    def telemetry(self, outbox_depth: int) -> None:
        metrics = {"outbox_depth": float(outbox_depth), "rss_bytes": 80e6 + outbox_depth * 1e6}
        self.publish(protocol.Telemetry(device=self.device, ts=time.time(), metrics=metrics), "telemetry")
        time.sleep(0.01)

    def result(self, label: str) -> str:
        record = result_record(label=label)
        self.publish(results_msg(self.device, [record]), "results")
        return record.id


@contextmanager
def devices(broker: Broker, *names: str) -> Iterator[list[Device]]:
    made: list[Device] = []
    try:
        for name in names:
            made.append(Device(broker, name))
        yield made
    finally:
        for d in made:
            d.close()
