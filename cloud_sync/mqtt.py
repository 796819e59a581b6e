"""The cloud's MQTT link: the only cloud module that imports paho.

A small publish/subscribe interface over one paho client speaking MQTT 5:
``subscribe()`` returns its unsubscribe callable and survives reconnects (the
link re-subscribes on every CONNACK); every handler call is guarded, so one bad
handler cannot stop message handling; paho's errors become ``BrokerError``.

With ``manual_ack`` the broker's PUBACK for a received message is sent only
when the application calls :meth:`MqttLink.ack` (the ingest role does so after
its database commit), which also bounds how many unprocessed messages the
broker pushes at us (its in-flight window).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud_sync.config import CloudConfig
from cloud_sync.errors import BrokerError

logger = logging.getLogger(__name__)

SHARE_PREFIX = "$share/"


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30

    @classmethod
    def from_config(cls, config: CloudConfig) -> BrokerSettings:
        return cls(
            host=config.broker_host,
            port=config.broker_port,
            tls=config.broker_tls,
            ca_file=config.broker_ca_file,
            cert_file=config.broker_cert_file,
            key_file=config.broker_key_file,
            username=config.broker_username,
            password=None if config.broker_password is None else config.broker_password.get_secret_value(),
            keepalive_s=config.broker_keepalive_s,
        )

    def __repr__(self) -> str:  # never show the password
        return f"BrokerSettings({self.host}:{self.port}, tls={self.tls}, user={self.username!r})"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received: float
    response_topic: str | None = None
    correlation: bytes | None = None


Handler = Callable[[Message], None]


def shared(pattern: str, group: str | None) -> str:
    """``edge/+/results`` -> ``$share/<group>/edge/+/results`` (unchanged without a group)."""
    return f"{SHARE_PREFIX}{group}/{pattern}" if group else pattern


def _match_filter(subscription: str) -> str:
    if subscription.startswith(SHARE_PREFIX):
        return subscription.split("/", 2)[2]
    return subscription


class MqttLink:
    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        manual_ack: bool = False,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
    ) -> None:
        """``session_expiry_s`` with ``clean_start=False``: the broker keeps the session (and queues
        QoS 1 messages for it) that long after a disconnect."""
        self.settings = settings
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_connect_fail = self._on_connect_fail
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._pending_subacks: set[int] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background (reconnecting forever); wait up to ``wait_s`` for the CONNACK."""
        s = self.settings
        try:
            if s.username is not None:
                self._client.username_pw_set(s.username, s.password)
            if s.tls:
                self._client.tls_set(
                    ca_certs=None if s.ca_file is None else str(s.ca_file),
                    certfile=None if s.cert_file is None else str(s.cert_file),
                    keyfile=None if s.key_file is None else str(s.key_file),
                )
            props: Properties | None = None
            if self.session_expiry_s is not None:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.session_expiry_s
            self._client.connect_async(
                s.host, s.port, keepalive=s.keepalive_s, clean_start=self.clean_start, properties=props
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BrokerError(f"cannot set up the connection to {s.host}:{s.port}: {exc}") from None
        self._client.loop_start()
        self._started = True
        if wait_s is not None and not self._connected.wait(wait_s):
            reason = self._refused or "no answer"
            raise BrokerError(f"broker {s.host}:{s.port} not connected after {wait_s:g} s ({reason})")

    def close(self) -> None:
        if self._started:
            self._connected.clear()  # a disconnect we asked for: not worth a warning
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- subscribe / publish -------------------------------------------------------------
    def subscribe(self, subscription: str, handler: Handler, *, qos: int = 1) -> Callable[[], None]:
        """Subscribe (``$share/<group>/...`` allowed); returns the callable that unsubscribes."""
        with self._lock:
            self._subs[subscription] = (qos, handler)
        if self.connected:
            self._send_subscribe([subscription])

        def unsubscribe() -> None:
            with self._lock:
                self._subs.pop(subscription, None)
            self._client.unsubscribe(subscription)

        return unsubscribe

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once every subscription has been acknowledged by the broker."""
        return self._subscribed.wait(timeout_s)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
        wait_s: float | None = None,
    ) -> None:
        """Queue a message; with ``wait_s`` block until the broker has it (PUBACK for QoS 1)."""
        props: Properties | None = None
        if response_topic is not None or correlation is not None or expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish on {topic} failed: {paho.error_string(info.rc)}")
        if wait_s is None:
            return
        try:
            info.wait_for_publish(wait_s)
        except (ValueError, RuntimeError) as exc:
            raise BrokerError(f"publish on {topic} failed: {exc}") from None
        if not info.is_published():
            raise BrokerError(f"broker did not accept the message on {topic} within {wait_s:g} s")

    def ack(self, message: Message) -> None:
        """Send the PUBACK of a message received with ``manual_ack`` (no-op for QoS 0)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- paho callbacks (network thread) --------------------------------------------------
    def _send_subscribe(self, subscriptions: list[str]) -> None:
        with self._lock:
            wanted = [(s, SubscribeOptions(qos=self._subs[s][0])) for s in subscriptions if s in self._subs]
        if not wanted:
            self._subscribed.set()
            return
        self._subscribed.clear()
        with self._lock:  # held until the mid is recorded, so its SUBACK cannot be missed
            rc, mid = self._client.subscribe(wanted)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subacks.add(mid)
                return
        logger.warning("subscribe to %s not sent: %s", [w[0] for w in wanted], paho.error_string(rc))

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            s = self.settings
            logger.error("broker %s:%s refused the connection: %s", s.host, s.port, reason)
            return
        self._refused = None
        logger.info("connected to broker %s:%s as %s", self.settings.host, self.settings.port, self.client_id)
        self._connected.set()
        with self._lock:
            subs = list(self._subs)
        self._send_subscribe(subs)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if self._refused is None:
            s = self.settings
            logger.warning("cannot reach broker %s:%s (retrying)", s.host, s.port)
        self._refused = "connection refused, host unreachable or TLS handshake failed"

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if self._connected.is_set():
            logger.warning("disconnected from broker: %s (reconnecting)", reason)
        self._connected.clear()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                logger.error("broker refused a subscription: %s", reason)
        with self._lock:
            self._pending_subacks.discard(mid)
            done = not self._pending_subacks
        if done:
            self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            props = getattr(msg, "properties", None)
            message = Message(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                retain=bool(msg.retain),
                mid=msg.mid,
                received=time.time(),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation=getattr(props, "CorrelationData", None),
            )
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            logger.warning("undecodable MQTT message dropped: %s", exc)
            self._client.ack(msg.mid, msg.qos)
            return
        with self._lock:
            subs = list(self._subs.items())
        handlers = [h for s, (_, h) in subs if paho.topic_matches_sub(_match_filter(s), message.topic)]
        if not handlers:  # nobody will ack it (manual_ack): do it now so the in-flight window stays open
            self.ack(message)
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                logger.exception("handler for %s failed", message.topic)
                self.ack(message)
