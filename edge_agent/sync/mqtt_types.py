"""What the MQTT link takes and gives, without paho: options, messages, errors.

``edge_agent/sync/mqtt.py`` (the only module that imports paho) builds the link from these;
``cloud_sync/mqtt.py`` maps the cloud's settings onto ``LinkOptions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.errors import EdgeAgentError
from edge_agent.sync.settings import SyncConfig

CLIENT_QUEUE_LIMIT = 10_000  # QoS 1 messages paho may hold (in flight + waiting for a connection)
SHARE_PREFIX = "$share/"


class MqttError(EdgeAgentError):
    status = 503
    code = "mqtt_error"


class NotConnected(MqttError):
    code = "mqtt_not_connected"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = None
    response_topic: str | None = None
    mid: int = 0  # the packet id ``ack`` needs (manual_ack)
    received: float = 0.0  # time.time() when it arrived


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How a link connects: the device builds them from ``SyncConfig``, the cloud from ``CloudConfig``."""

    broker_host: str
    broker_port: int
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    persistent: bool = False  # keep the session (and the broker's queue for it) across disconnects
    session_expiry_s: int = 3600  # MQTT 5, with ``persistent``
    max_inflight: int | None = None  # None: paho's default (20)
    queue_limit: int | None = None  # None: unbounded

    def __repr__(self) -> str:  # never show the password
        return f"LinkOptions({self.broker_host}:{self.broker_port}, tls={self.tls}, user={self.username!r})"

    @classmethod
    def for_device(cls, s: SyncConfig) -> LinkOptions:
        return cls(
            broker_host=s.broker_host,
            broker_port=s.broker_port,
            protocol=s.protocol,
            tls=s.tls,
            ca_file=s.ca_file,
            cert_file=s.cert_file,
            key_file=s.key_file,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            keepalive_s=s.keepalive_s,
            reconnect_min_s=s.reconnect_min_s,
            reconnect_max_s=s.reconnect_max_s,
            persistent=True,
            session_expiry_s=s.session_expiry_s,
            max_inflight=max(20, s.max_inflight_messages),
            queue_limit=CLIENT_QUEUE_LIMIT,
        )


Handler = Callable[[Message], None]


def shared(pattern: str, group: str | None) -> str:
    """``edge/+/results`` -> ``$share/<group>/edge/+/results`` (unchanged without a group)."""
    return f"{SHARE_PREFIX}{group}/{pattern}" if group else pattern
