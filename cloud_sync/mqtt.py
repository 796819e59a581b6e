"""The cloud's MQTT link: the project's one paho wrapper (``edge_agent.sync.mqtt.MqttLink``)
with the cloud's settings and errors.

Every cloud role speaks MQTT 5. ``subscribe()`` returns its unsubscribe callable and survives
reconnects; every handler call is guarded; ``shared()`` spells an MQTT 5 shared subscription.
With ``manual_ack`` the broker's PUBACK for a received message is sent only when the
application calls :meth:`MqttLink.ack` (the ingest role does so after its database commit),
which also bounds how many unprocessed messages the broker pushes at us. Errors of the link
become ``BrokerError`` here, where they enter ``cloud_sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from cloud_sync.config import CloudConfig
from cloud_sync.errors import BrokerError
from edge_agent.sync.mqtt import LinkOptions, Message, MqttError, shared
from edge_agent.sync.mqtt import MqttLink as _Link

__all__ = ["Handler", "LinkOptions", "Message", "MqttLink", "broker_options", "shared"]

Handler = Callable[[Message], None]


def broker_options(config: CloudConfig) -> LinkOptions:
    """The cloud's broker settings as the link's options (always MQTT 5)."""
    password = config.broker_password
    return LinkOptions(
        broker_host=config.broker_host,
        broker_port=config.broker_port,
        tls=config.broker_tls,
        ca_file=config.broker_ca_file,
        cert_file=config.broker_cert_file,
        key_file=config.broker_key_file,
        username=config.broker_username,
        password=None if password is None else password.get_secret_value(),
        keepalive_s=config.broker_keepalive_s,
    )


class MqttLink:
    def __init__(
        self,
        options: LinkOptions,
        client_id: str,
        *,
        manual_ack: bool = False,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
    ) -> None:
        """``clean_start=False`` with ``session_expiry_s``: the broker keeps the session (and queues
        QoS 1 messages for it) that long after a disconnect."""
        options = replace(
            options, protocol="5", persistent=not clean_start, session_expiry_s=session_expiry_s or 0
        )
        self.options = options
        self.client_id = client_id
        try:
            self._link = _Link(options, client_id, manual_ack=manual_ack)
        except MqttError as exc:
            raise BrokerError(
                f"cannot set up the connection to {options.broker_host}:{options.broker_port}: {exc.message}"
            ) from None

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background (reconnecting forever); wait up to ``wait_s`` for the CONNACK."""
        try:
            self._link.start(wait_s)
        except MqttError as exc:
            raise BrokerError(exc.message) from None

    def close(self) -> None:
        self._link.stop()

    @property
    def connected(self) -> bool:
        return self._link.connected

    def subscribe(self, subscription: str, handler: Handler, *, qos: int = 1) -> Callable[[], None]:
        """Subscribe (``$share/<group>/...`` allowed); returns the callable that unsubscribes."""
        return self._link.subscribe(subscription, handler, qos)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once every subscription has been acknowledged by the broker."""
        return self._link.wait_subscribed(timeout_s)

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
        try:
            sent = self._link.publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                correlation_data=correlation,
                response_topic=response_topic,
                expiry_s=expiry_s,
            )
        except MqttError as exc:
            raise BrokerError(f"publish on {topic} failed: {exc.message}") from None
        if wait_s is not None and not sent.wait(wait_s):
            raise BrokerError(f"broker did not accept the message on {topic} within {wait_s:g} s")

    def ack(self, message: Message) -> None:
        """Send the PUBACK of a message received with ``manual_ack`` (no-op for QoS 0)."""
        self._link.ack(message)
