"""A small publish/subscribe interface over paho-mqtt: the one paho wrapper of the project.

The device's sync role and every cloud role (``cloud_sync/mqtt.py`` only adapts its
config and error type) use this class; ``LinkOptions`` says how each connects.

- The device: client id = device id, a persistent session (MQTT 3.1.1
  ``clean_session=False``, MQTT 5 ``clean_start=False`` with a session expiry), a
  Last Will set before connecting. The cloud: MQTT 5, shared subscriptions
  (``$share/<group>/...``) and ``manual_ack``: the broker's PUBACK for a received
  message goes out only when the application calls ``ack`` (after its database
  commit), which also bounds how many unprocessed messages the broker pushes.
- TLS and user name / password when configured; QoS 1 by default; TCP_NODELAY.
- paho's network thread connects in the background and reconnects with
  exponential backoff (``reconnect_min_s`` doubling up to ``reconnect_max_s``);
  every subscription is renewed on each connect, since a broker that restarted
  without persistence has forgotten them; ``wait_subscribed`` waits for the SUBACKs.
- ``subscribe`` returns the unsubscribe callable. Every handler and callback is
  guarded: one that raises is logged, and message handling carries on.

Callbacks run on paho's network thread: they should hand work off, not do it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.sync.mqtt_types import (
    CLIENT_QUEUE_LIMIT,
    SHARE_PREFIX,
    Handler,
    LinkOptions,
    Message,
    MqttError,
    NotConnected,
    shared,
)
from edge_agent.sync.settings import SyncConfig

logger = logging.getLogger(__name__)

__all__ = [
    "CLIENT_QUEUE_LIMIT",
    "Handler",
    "LinkOptions",
    "Message",
    "MqttError",
    "MqttLink",
    "NotConnected",
    "Published",
    "shared",
]


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


def _match_filter(subscription: str) -> str:
    """The topic filter a (possibly shared) subscription matches."""
    if subscription.startswith(SHARE_PREFIX):
        parts = subscription.split("/", 2)
        return parts[2] if len(parts) == 3 else subscription
    return subscription


class MqttLink:
    def __init__(
        self,
        settings: SyncConfig | LinkOptions,
        client_id: str,
        *,
        will: Message | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        opts = settings if isinstance(settings, LinkOptions) else LinkOptions.for_device(settings)
        self.options = opts
        self.client_id = client_id
        self._v5 = opts.protocol == "5"
        self._manual_ack = manual_ack
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._handlers: dict[str, list[tuple[Handler, int]]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subacks: set[int] = set()
        self._refused: str | None = None
        self._started = False
        self._stopping = False
        if self._v5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=manual_ack
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=not opts.persistent,
                protocol=paho.MQTTv311,
                manual_ack=manual_ack,
            )
        if logger.isEnabledFor(logging.DEBUG):  # paho logs routine reconnect failures as errors
            client.enable_logger(logging.getLogger(__name__ + ".paho"))
        client.reconnect_delay_set(opts.reconnect_min_s, opts.reconnect_max_s)
        if opts.max_inflight is not None:
            client.max_inflight_messages_set(opts.max_inflight)
        if opts.queue_limit is not None:
            client.max_queued_messages_set(opts.queue_limit)
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if opts.tls:
            try:
                client.tls_set(
                    ca_certs=str(opts.ca_file) if opts.ca_file else None,
                    certfile=str(opts.cert_file) if opts.cert_file else None,
                    keyfile=str(opts.key_file) if opts.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttError(f"cannot set up TLS: {exc}") from None
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = lambda *a: _guarded("on_connect", self._on_connect, *a)
        client.on_connect_fail = lambda *a: _guarded("on_connect_fail", self._on_connect_fail, *a)
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

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once the broker has acknowledged every subscription sent on the last connect."""
        return self._subscribed.wait(timeout_s)

    def start(self, wait_s: float | None = None) -> None:
        """Connect in the background, retrying with backoff until ``stop``; with ``wait_s``, wait that
        long for the CONNACK (``NotConnected`` with the broker's answer if none came)."""
        o = self.options
        props = None
        if self._v5 and o.persistent:
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = o.session_expiry_s
        try:
            if self._v5:
                self._client.connect_async(
                    o.broker_host,
                    o.broker_port,
                    o.keepalive_s,
                    clean_start=not o.persistent,
                    properties=props,
                )
            else:
                self._client.connect_async(o.broker_host, o.broker_port, o.keepalive_s)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {o.broker_host}:{o.broker_port}: {exc}") from None
        self._stopping = False
        self._client.loop_start()
        self._started = True
        logger.info("connecting to mqtt%s://%s:%d", "s" if o.tls else "", o.broker_host, o.broker_port)
        if wait_s is not None and not self._connected.wait(wait_s):
            reason = self._refused or "no answer"
            raise NotConnected(
                f"broker {o.broker_host}:{o.broker_port} not connected after {wait_s:g} s ({reason})"
            )

    def stop(self, last: Message | None = None, timeout_s: float = 3.0) -> None:
        """Publish ``last`` (e.g. an offline status) if connected, then disconnect cleanly."""
        if last is not None and self.connected:
            try:
                self.publish(last.topic, last.payload, qos=last.qos, retain=last.retain).wait(timeout_s)
            except MqttError as exc:
                logger.warning("could not publish %s before disconnecting: %s", last.topic, exc.message)
        self._stopping = True
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
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
        response_topic: str | None = None,
        expiry_s: int | None = None,
    ) -> Published:
        """Queue a message (MQTT 5 properties ignored on 3.1.1); ``.wait`` for the broker's PUBACK."""
        props = None
        if self._v5 and (correlation_data is not None or response_topic is not None or expiry_s is not None):
            props = _properties(PacketTypes.PUBLISH)
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
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
        """Call ``handler`` for each message matching ``topic_filter`` (``$share/<group>/...``
        allowed); returns the unsubscribe callable."""
        entry = (handler, qos)
        with self._lock:
            first = topic_filter not in self._handlers
            self._handlers.setdefault(topic_filter, []).append(entry)
        if first and self.connected:
            self._send_subscribe([(topic_filter, qos)])

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

    def ack(self, message: Message) -> None:
        """Send the PUBACK of a message received with ``manual_ack`` (no-op for QoS 0)."""
        if self._manual_ack and message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- paho callbacks (network thread) -------------------------------------------
    def _send_subscribe(self, filters: list[tuple[str, int]]) -> None:
        if not filters:
            self._subscribed.set()
            return
        self._subscribed.clear()
        with self._lock:  # held until the mid is recorded, so its SUBACK cannot be missed
            rc, mid = self._client.subscribe(filters)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subacks.add(mid)
                return
        logger.warning("subscribe to %s not sent: %s", [f for f, _ in filters], paho.error_string(rc))

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        o = self.options
        if reason.is_failure:
            self._refused = str(reason)
            logger.warning("broker %s:%s refused the connection: %s", o.broker_host, o.broker_port, reason)
            return
        self._refused = None
        with self._lock:
            filters = [(f, max(q for _, q in hs)) for f, hs in self._handlers.items() if hs]
        self._send_subscribe(filters)
        self._connected.set()
        logger.info(
            "connected to the broker %s:%s as %s (session present: %s)",
            o.broker_host,
            o.broker_port,
            self.client_id,
            flags.session_present,
        )
        if self._on_connect_cb is not None:
            _guarded("on_connect callback", self._on_connect_cb, bool(flags.session_present))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if self._refused is None:
            logger.warning(
                "cannot reach broker %s:%s (retrying)", self.options.broker_host, self.options.broker_port
            )
        self._refused = "connection refused, host unreachable or TLS handshake failed"

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
        with self._lock:
            self._pending_subacks.discard(mid)
            done = not self._pending_subacks
        if done:
            self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        response = getattr(props, "ResponseTopic", None)
        try:
            topic = msg.topic
        except UnicodeDecodeError as exc:  # a topic that is not UTF-8: nobody can handle it
            logger.warning("undecodable MQTT message dropped: %s", exc)
            if self._manual_ack and msg.qos > 0:
                self._client.ack(msg.mid, msg.qos)
            return
        message = Message(
            topic=topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            response_topic=response if isinstance(response, str) else None,
            mid=msg.mid,
            received=time.time(),
        )
        with self._lock:
            matching = [
                h
                for pattern, entries in self._handlers.items()
                if paho.topic_matches_sub(_match_filter(pattern), message.topic)
                for h, _ in entries
            ]
        if not matching:  # nobody will ack it (manual_ack): do it now so the in-flight window stays open
            self.ack(message)
        for handler in matching:
            try:
                handler(message)
            except Exception:
                logger.exception("handler for %s raised; message handling continues", message.topic)
                self.ack(message)  # a failed handler will not ack it
