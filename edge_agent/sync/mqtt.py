"""A small publish/subscribe interface over paho-mqtt: the only module that imports paho.

- Client id = device id, a persistent session (MQTT 3.1.1 ``clean_session=False``,
  MQTT 5 ``clean_start=False`` with a session expiry), QoS 1 by default.
- TLS and user name / password when configured; a Last Will set before connecting.
- paho's network thread connects in the background and reconnects with
  exponential backoff (``reconnect_min_s`` doubling up to ``reconnect_max_s``);
  every subscription is renewed on each connect, since a broker that restarted
  without persistence has forgotten them.
- ``subscribe`` returns the unsubscribe callable. Every handler and callback is
  guarded: one that raises is logged, and message handling carries on.

Callbacks run on paho's network thread: they should hand work off, not do it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import EdgeAgentError
from edge_agent.sync.settings import SyncConfig

logger = logging.getLogger(__name__)

CLIENT_QUEUE_LIMIT = 10_000  # QoS 1 messages paho may hold (in flight + waiting for a connection)


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


Handler = Callable[[Message], None]


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish`` returns: wait for the broker's PUBACK (QoS 1) if you need to."""

    _info: paho.MQTTMessageInfo

    def wait(self, timeout_s: float) -> bool:
        try:
            self._info.wait_for_publish(timeout_s)
        except (ValueError, RuntimeError):
            return False
        return self._info.is_published()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Small QoS 1 packets go out at once: with Nagle, each waits for the broker's delayed TCP ACK."""
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _guarded(what: str, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("%s raised; message handling continues", what)


class MqttLink:
    def __init__(
        self,
        settings: SyncConfig,
        client_id: str,
        *,
        will: Message | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._v5 = settings.protocol == "5"
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._handlers: dict[str, list[tuple[Handler, int]]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = False
        if self._v5:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311
            )
        if logger.isEnabledFor(logging.DEBUG):  # paho logs routine reconnect failures as errors
            client.enable_logger(logging.getLogger(__name__ + ".paho"))
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        client.max_inflight_messages_set(max(20, settings.max_inflight_messages))
        client.max_queued_messages_set(CLIENT_QUEUE_LIMIT)
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if settings.tls:
            try:
                client.tls_set(
                    ca_certs=str(settings.ca_file) if settings.ca_file else None,
                    certfile=str(settings.cert_file) if settings.cert_file else None,
                    keyfile=str(settings.key_file) if settings.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttError(f"cannot set up TLS: {exc}") from None
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = lambda *a: _guarded("on_connect", self._on_connect, *a)
        client.on_disconnect = lambda *a: _guarded("on_disconnect", self._on_disconnect, *a)
        client.on_message = lambda *a: _guarded("on_message", self._on_message, *a)
        client.on_subscribe = lambda *a: _guarded("on_subscribe", self._on_subscribe, *a)
        client.on_socket_open = lambda *a: _guarded("on_socket_open", _no_delay, *a)
        self._client = client

    # -- lifecycle -------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Connect in the background; retries (with backoff) until ``stop``."""
        s = self.settings
        props = None
        if self._v5:
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
        try:
            if self._v5:
                self._client.connect_async(
                    s.broker_host, s.broker_port, s.keepalive_s, clean_start=False, properties=props
                )
            else:
                self._client.connect_async(s.broker_host, s.broker_port, s.keepalive_s)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {s.broker_host}:{s.broker_port}: {exc}") from None
        self._client.loop_start()
        logger.info("connecting to mqtt%s://%s:%d", "s" if s.tls else "", s.broker_host, s.broker_port)

    def stop(self, last: Message | None = None, timeout_s: float = 3.0) -> None:
        """Publish ``last`` (e.g. an offline status) if connected, then disconnect cleanly."""
        if last is not None and self.connected:
            try:
                self.publish(last.topic, last.payload, qos=last.qos, retain=last.retain).wait(timeout_s)
            except MqttError as exc:
                logger.warning("could not publish %s before disconnecting: %s", last.topic, exc.message)
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # -- publish / subscribe -------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> Published:
        props = None
        if self._v5 and correlation_data is not None:
            props = _properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as exc:
            raise MqttError(f"cannot publish on {topic}: {exc}") from None
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            raise NotConnected(f"not connected to the broker; {topic} not published")
        # QoS > 0 while disconnected: paho keeps the message (bounded) and sends it on reconnect
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"cannot publish on {topic}: {paho.error_string(info.rc)}")
        return Published(info)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> Callable[[], None]:
        """Call ``handler`` for each message matching ``topic_filter``; returns the unsubscribe callable."""
        entry = (handler, qos)
        with self._lock:
            first = topic_filter not in self._handlers
            self._handlers.setdefault(topic_filter, []).append(entry)
        if first and self.connected:
            self._client.subscribe(topic_filter, qos)

        def unsubscribe() -> None:
            with self._lock:
                entries = self._handlers.get(topic_filter, [])
                if entry in entries:
                    entries.remove(entry)
                last = not entries and topic_filter in self._handlers
                if last:
                    del self._handlers[topic_filter]
            if last and self.connected:
                self._client.unsubscribe(topic_filter)

        return unsubscribe

    # -- paho callbacks (network thread) -------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.warning("broker refused the connection: %s", reason)
            return
        with self._lock:
            filters = [(f, max(q for _, q in hs)) for f, hs in self._handlers.items() if hs]
        if filters:
            client.subscribe(filters)
        self._connected.set()
        logger.info("connected to the broker (session present: %s)", flags.session_present)
        if self._on_connect_cb is not None:
            _guarded("on_connect callback", self._on_connect_cb, bool(flags.session_present))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            logger.info("disconnected from the broker")
        elif was:
            logger.warning("disconnected from the broker (%s); reconnecting with backoff", reason)
            if self._on_disconnect_cb is not None:
                _guarded("on_disconnect callback", self._on_disconnect_cb)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                logger.error("broker refused a subscription: %s", reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        response = getattr(props, "ResponseTopic", None)
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            response_topic=response if isinstance(response, str) else None,
        )
        with self._lock:
            matching = [
                h
                for pattern, entries in self._handlers.items()
                if paho.topic_matches_sub(pattern, message.topic)
                for h, _ in entries
            ]
        for handler in matching:
            _guarded(f"handler for {message.topic}", handler, message)
