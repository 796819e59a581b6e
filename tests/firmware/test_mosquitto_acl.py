"""The broker configuration shipped in firmware_images/mosquitto, started for real.

The shipped mosquitto.conf runs with only what a test must change: its paths point at a
temporary directory, its listeners at free loopback ports, and it keeps the user that
starts it (it drops root for `mosquitto` in production). Certificates come from
make-certs.sh and every credential and ACL entry from provision-device.sh, so what is
tested is what an operator runs.
"""

from __future__ import annotations

import getpass
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.sync.broker import MOSQUITTO, free_port

FW = Path(__file__).resolve().parents[2] / "firmware_images"
CONF = FW / "mosquitto" / "mosquitto.conf"
QUIET_S = 1.5  # how long "nothing arrives" is waited for
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87


@dataclass
class Broker:
    dir: Path
    tls_port: int
    mtls_port: int
    local_port: int
    proc: subprocess.Popen[bytes]

    @property
    def ca(self) -> Path:
        return self.dir / "certs" / "ca.crt"

    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")


def run(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, check=True)


def provision(broker_dir: Path, *args: str) -> None:
    run(FW / "provision-device.sh", "--dir", broker_dir, *args)


def adapted_config(broker_dir: Path, tls: int, mtls: int, local: int) -> str:
    """The shipped config with test paths, ports and user; every substitution must apply once."""
    text = CONF.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    replacements = [
        (r"/etc/mosquitto/edge/", f"{broker_dir}/", 8),  # passwd, acl, 3 x (ca, cert, key) over 2 listeners
        (r"/var/lib/mosquitto/", f"{broker_dir}/data/", 1),
        (r"^listener 8883$", f"listener {tls} 127.0.0.1", 1),
        (r"^listener 8884$", f"listener {mtls} 127.0.0.1", 1),
        (r"^listener 1883 127\.0\.0\.1$", f"listener {local} 127.0.0.1", 1),
        (r"^user mosquitto$", f"user {getpass.getuser()}", 1),
    ]
    for pattern, value, count in replacements:
        text, n = re.subn(pattern, value, text, flags=re.M)
        assert n == count, f"{pattern!r} matched {n} times in {CONF}, expected {count}"
    assert not re.search(r"\s/(etc|var)/", text), "a path the test did not move"
    return text + "\n"


def wait_listening(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + 10
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mosquitto is not listening on {pending}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.2):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    d = tmp_path_factory.mktemp("edge-broker")
    run(FW / "make-certs.sh", d / "certs", "localhost")
    provision(d, "--password", "pw-A", "--client-cert", "A")
    provision(d, "--password", "pw-B", "B")
    provision(d, "--password", "pw-C", "C")
    provision(d, "--password", "pw-cloud", "--service", "cloud")
    (d / "data").mkdir()
    ports = [free_port(), free_port(), free_port()]
    conf = d / "mosquitto.conf"
    conf.write_text(adapted_config(d, *ports))
    log = d / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=out)
    b = Broker(d, *ports, proc)
    try:
        wait_listening(proc, ports, log)
        yield b
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A paho client that records what the broker answered."""

    def __init__(self, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> None:
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=protocol
        )
        self.connack: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.pubacks: dict[int, Any] = {}
        self.puback_event = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_publish = self._on_publish
        self.c.reconnect_delay_set(30, 30)  # a refused client must not retry during the test

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        self.pubacks[mid] = rc
        self.puback_event.set()

    def connect(
        self, port: int, *, user: str | None = None, password: str | None = None, wait: float = 5, **tls: Any
    ) -> Any:
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls:
            self.c.tls_set(cert_reqs=ssl.CERT_REQUIRED, **tls)
        self.c.connect("localhost", port, keepalive=30)
        self.c.loop_start()
        try:
            return self.connack.get(timeout=wait)
        except queue.Empty:
            return None

    def subscribe(self, topic: str) -> list[Any]:
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        deadline = time.monotonic() + 5
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks.get(info.mid)

    def received(self, topic: str, payload: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                return False
            if m.topic == topic and m.payload == payload:
                return True
        return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def new(clients: list[Client], protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> Client:
    client = Client(protocol)
    clients.append(client)
    return client


def admin(broker: Broker, clients: list[Client]) -> Client:
    cloud = new(clients)
    assert cloud.connect(broker.tls_port, user="cloud", password="pw-cloud", ca_certs=str(broker.ca)) == 0
    assert [rc.value for rc in cloud.subscribe("edge/#")] == [1]
    return cloud


def device(
    broker: Broker,
    clients: list[Client],
    name: str,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
) -> Client:
    dev = new(clients, protocol)
    rc = dev.connect(broker.tls_port, user=name, password=f"pw-{name}", ca_certs=str(broker.ca))
    assert rc == 0, f"{name} refused: {rc}\n{broker.log()}"
    return dev


# -- per-device ACL ---------------------------------------------------------------------------------
def test_device_publishes_under_its_own_prefix(broker: Broker, clients: list[Client]) -> None:
    cloud = admin(broker, clients)
    a = device(broker, clients, "A")
    payload = uuid.uuid4().bytes
    assert a.publish("edge/A/results", payload) == 0
    assert cloud.received("edge/A/results", payload, timeout=5)


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311], ids=["v5", "v3.1.1"]
)
def test_device_cannot_publish_under_another_device(
    broker: Broker, clients: list[Client], protocol: MQTTProtocolVersion
) -> None:
    cloud = admin(broker, clients)
    a = device(broker, clients, "A", protocol)
    payload = uuid.uuid4().bytes
    reason = a.publish("edge/B/results", payload)
    if protocol == MQTTProtocolVersion.MQTTv5:
        assert reason == NOT_AUTHORIZED  # MQTT 5 says so in the PUBACK; 3.1.1 drops it silently
    assert not cloud.received("edge/B/results", payload, timeout=QUIET_S)
    # and the same client still may publish under its own prefix
    assert a.publish("edge/A/results", payload) == 0
    assert cloud.received("edge/A/results", payload, timeout=5)


def test_device_cannot_read_another_device(broker: Broker, clients: list[Client]) -> None:
    cloud = admin(broker, clients)
    a = device(broker, clients, "A")
    b = device(broker, clients, "B")
    a.subscribe("edge/B/#")  # mosquitto 2.0 may grant it, and then delivers nothing the ACL does not allow
    b.subscribe("edge/B/cmd")
    payload = uuid.uuid4().bytes
    assert cloud.publish("edge/B/cmd", payload) == 0
    assert b.received("edge/B/cmd", payload, timeout=5)
    assert not a.received("edge/B/cmd", payload, timeout=QUIET_S)


def test_cloud_service_reaches_each_device_and_only_that_one(broker: Broker, clients: list[Client]) -> None:
    cloud = admin(broker, clients)
    a = device(broker, clients, "A")
    b = device(broker, clients, "B")
    a.subscribe("edge/A/cmd")
    b.subscribe("edge/+/cmd")  # a wildcard over other devices grants nothing beyond B's own prefix
    payload = uuid.uuid4().bytes
    assert cloud.publish("edge/A/cmd", payload) == 0
    assert a.received("edge/A/cmd", payload, timeout=5)
    assert not b.received("edge/A/cmd", payload, timeout=QUIET_S)


# -- authentication ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("A", "wrong"), ("nobody", "pw-A")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_client_without_valid_credentials_is_refused(
    broker: Broker, clients: list[Client], user: str | None, password: str | None
) -> None:
    rc = new(clients).connect(broker.tls_port, user=user, password=password, ca_certs=str(broker.ca))
    assert rc is not None and rc.is_failure and rc.value == NOT_AUTHORIZED, rc


def test_loopback_listener_for_the_cloud_service_needs_a_password(
    broker: Broker, clients: list[Client]
) -> None:
    assert new(clients).connect(broker.local_port, user="cloud", password="pw-cloud") == 0
    rc = new(clients).connect(broker.local_port)
    assert rc is not None and rc.is_failure


def test_revoked_device_is_refused_after_reload(broker: Broker, clients: list[Client]) -> None:
    assert device(broker, clients, "C") is not None
    provision(broker.dir, "--revoke", "C")
    assert "user C" not in (broker.dir / "acl").read_text()
    broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads the password and ACL files
    time.sleep(0.5)
    rc = new(clients).connect(broker.tls_port, user="C", password="pw-C", ca_certs=str(broker.ca))
    assert rc is not None and rc.is_failure


# -- TLS ---------------------------------------------------------------------------------------------
def test_tls_with_the_generated_ca_is_accepted_and_verified(broker: Broker, tmp_path: Path) -> None:
    context = ssl.create_default_context(cafile=str(broker.ca))  # hostname checked against the SAN
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert ("DNS", "localhost") in tls.getpeercert()["subjectAltName"]
    run(FW / "make-certs.sh", tmp_path / "other-ca")  # a CA the broker's certificate is not from
    other = ssl.create_default_context(cafile=str(tmp_path / "other-ca" / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        other.wrap_socket(raw, server_hostname="localhost")


def test_plain_tcp_on_the_tls_port_is_refused(broker: Broker, clients: list[Client]) -> None:
    # an MQTT 3.1.1 CONNECT in clear text: the TLS listener answers no CONNACK
    connect = (
        bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x04]) + b"test"
    )
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=2) as s:
        s.sendall(connect)
        try:
            answer = s.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20"), f"a CONNACK came back in clear text: {answer!r}"
    rc = new(clients).connect(broker.tls_port, user="A", password="pw-A", wait=QUIET_S)  # paho without TLS
    assert rc is None or rc.is_failure


def test_mutual_tls_listener_takes_the_device_from_its_certificate(
    broker: Broker, clients: list[Client]
) -> None:
    cloud = admin(broker, clients)
    a = new(clients)
    rc = a.connect(
        broker.mtls_port,
        ca_certs=str(broker.ca),
        certfile=str(broker.dir / "devices" / "A.crt"),
        keyfile=str(broker.dir / "devices" / "A.key"),
    )
    assert rc == 0, broker.log()
    payload = uuid.uuid4().bytes
    assert a.publish("edge/A/telemetry", payload) == 0
    assert cloud.received("edge/A/telemetry", payload, timeout=5)
    assert a.publish("edge/B/telemetry", payload) == NOT_AUTHORIZED
    assert not cloud.received("edge/B/telemetry", payload, timeout=QUIET_S)
    # without a client certificate the handshake itself fails
    context = ssl.create_default_context(cafile=str(broker.ca))
    with (
        socket.create_connection(("127.0.0.1", broker.mtls_port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"\x10\x00")
        tls.recv(1)  # TLS 1.3 reports the missing certificate on the first read


# -- the provisioning script itself ------------------------------------------------------------------
def test_provisioning_writes_one_acl_block_per_device_and_replaces_it(tmp_path: Path) -> None:
    provision(tmp_path, "--password", "one", "dev-1")
    provision(tmp_path, "--password", "two", "dev-1")  # again: replaced, not duplicated
    provision(tmp_path, "--service", "cloud")
    acl = (tmp_path / "acl").read_text()
    assert acl.count("user dev-1\n") == 1
    assert "user dev-1\ntopic readwrite edge/dev-1/#\n" in acl
    assert "user cloud\ntopic readwrite edge/#\n" in acl
    assert "pattern" not in acl
    users = [line.split(":", 1)[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert sorted(users) == ["cloud", "dev-1"]
    env = (tmp_path / "devices" / "dev-1.env").read_text()
    assert "EDGE_SYNC__USERNAME=dev-1\n" in env and "EDGE_SYNC__PASSWORD=two\n" in env
    assert "EDGE_SYNC__TLS=true\n" in env and "EDGE_SYNC__BROKER_PORT=8883\n" in env
    assert oct((tmp_path / "devices" / "dev-1.env").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "passwd").stat().st_mode & 0o007 == 0, "the password file is not world-readable"


@pytest.mark.parametrize("name", ["a/b", "+", "#", "dev 1", "x" * 65, "Ü"])
def test_provisioning_refuses_a_name_that_would_break_topics(tmp_path: Path, name: str) -> None:
    out = subprocess.run(
        [str(FW / "provision-device.sh"), "--dir", str(tmp_path), name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert not (tmp_path / "passwd").exists()


def test_provisioned_env_file_is_a_valid_sync_config(tmp_path: Path) -> None:
    from edge_agent.config import load_config

    provision(tmp_path, "--password", "pw", "--broker", "mqtt.example.org", "dev-2")
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "devices" / "dev-2.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    config = load_config(None, env)
    assert config.device_id == "dev-2"
    assert config.sync.broker_host == "mqtt.example.org" and config.sync.tls
    assert config.sync.password is not None and config.sync.password.get_secret_value() == "pw"


def test_make_certs_keeps_an_existing_ca(tmp_path: Path) -> None:
    run(FW / "make-certs.sh", tmp_path, "broker.example.org", "10.0.0.5")
    ca = (tmp_path / "ca.crt").read_bytes()
    run(FW / "make-certs.sh", tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == ca
    text = run("openssl", "x509", "-in", tmp_path / "server.crt", "-noout", "-ext", "subjectAltName").stdout
    for entry in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:broker.example.org", "IP Address:10.0.0.5"):
        assert entry in text
    assert os.stat(tmp_path / "ca.key").st_mode & 0o077 == 0
