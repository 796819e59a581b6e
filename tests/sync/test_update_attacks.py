"""The Update Framework's attacks against the real update path: mosquitto, the cloud (ingest + API,
`cloud-sync` on the command line) and one `edge-agent up` device (gateway + sync roles) serving iris.

Each attack is what someone holding the broker credentials (or the cloud account, or one stolen key)
can publish on the device's retained ``models/desired``. Each must be refused with its reason on
``models/reported`` (read back through the cloud API and ``edge-console devices``), and the gateway
must keep answering with the version it served before. Tests run in file order on one device: each
states what it expects to be serving first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.deploy import desired_for, generate_keys, model_entry
from cloud_sync.store import Store
from cloud_sync.trust import Signer, load_keys
from demo.fleet import MOSQUITTO, Fleet
from edge_agent.sync import metadata, protocol, signing
from tests.conftest import ROOT
from tests.dashboard.test_dashboard_rollout import publish, wait_version

DEVICE = "atk-1"
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make test` (apt-get install mosquitto)"
    work = tmp_path_factory.mktemp("attacks")
    (work / "logs").mkdir()
    env = {"EDGE_GROUP": "canary"}  # its rollout group, reported in its status
    fleet = Fleet(work, devices=(DEVICE,), roles=("serve", "sync"), models=("iris",), device_env=env)
    try:
        fleet.start_broker()
        fleet.start_cloud()
        fleet.start_devices()
        for version in ("2", "3", "4"):
            publish(fleet, version)
        yield fleet
    finally:
        fleet.stop_all()


# -- helpers --------------------------------------------------------------------------------------
def db(fleet: Fleet) -> Path:
    return Path(fleet.cloud_env["CLOUD_DB_PATH"])


def key(fleet: Fleet, name: str = "signing") -> Path:
    return db(fleet).parent / f"{name}.pem"


def gateway(fleet: Fleet) -> int:
    return fleet.gateway_ports[DEVICE]


def deploy(fleet: Fleet, version: str, **extra: Any) -> str:
    """Deploy through the cloud API (signed with the API's key); wait until the device is active."""
    r = fleet.cloud_http.post(
        f"{fleet.api}/deployments",
        json={"model": "iris", "version": version, "devices": [DEVICE], "artifact_base_url": fleet.api}
        | extra,
    )
    assert r.status_code == 201, r.text
    dep = str(r.json()["id"])
    outcome = reported(fleet, dep)
    assert outcome["state"] == "active", outcome
    wait_version(gateway(fleet), version)
    return dep


def reported(fleet: Fleet, deployment: str) -> dict[str, Any]:
    """The device's final outcome for ``deployment``, as the cloud stored it from models/reported."""
    deadline = time.monotonic() + TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        last = fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json().get("last_update")
        if last and last["deployment"] == deployment and last["state"] in ("active", "failed", "rolled_back"):
            return dict(last)
        time.sleep(0.2)
    raise AssertionError(f"no final outcome for deployment {deployment}; last: {last}")


def console_summary(fleet: Fleet) -> str:
    """What `edge-console devices --json` says about the device's last update."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_CONSOLE_")}
    env |= {"EDGE_CONSOLE_API": fleet.api, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "cloud_sync.console.app", "devices", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    (row,) = [d for d in json.loads(done.stdout) if d["id"] == DEVICE]
    return str(row["last_update_summary"])


def legit(
    fleet: Fleet, version: str, *, keys: list[Path] | None = None, expiry_s: int = 3600
) -> protocol.ModelsDesired:
    """A desired state for DEVICE exactly as ``cloud_sync.deploy`` signs it (not published)."""
    signer = Signer(
        load_keys(keys or [key(fleet)]), db(fleet).parent / "trust", db(fleet).parent / "artifacts", expiry_s
    )
    store = Store(db(fleet))
    try:
        entry = model_entry(store, signer, store.model_version("iris", version), fleet.api)
        return desired_for(store, signer, DEVICE, uuid.uuid4().hex, [entry])
    finally:
        store.close()


def forged(msg: protocol.ModelsDesired, keys: list[Path], **changes: Any) -> protocol.ModelsDesired:
    """``msg`` with its targets document changed and signed again by ``keys`` (an attacker's keys)."""
    assert msg.targets is not None
    env = metadata.sign(msg.targets.signed | changes, [signing.load_private_key(k) for k in keys])
    return msg.model_copy(update={"targets": env})


def send(fleet: Fleet, msg: protocol.ModelsDesired | bytes) -> None:
    """Publish on the device's retained models/desired, as anyone with broker credentials can."""
    payload = msg if isinstance(msg, bytes) else protocol.encode(msg)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", fleet.broker_port)
    client.loop_start()
    try:
        client.publish(
            protocol.topic(DEVICE, "models_desired"), payload, qos=1, retain=True
        ).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def retained_desired(fleet: Fleet) -> bytes:
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peek-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", fleet.broker_port)
    client.loop_start()
    try:
        client.subscribe(protocol.topic(DEVICE, "models_desired"), 1)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    assert got, "no retained desired state"
    return got[0]


def refused(
    fleet: Fleet, msg: protocol.ModelsDesired | bytes, code: str, fragment: str, serving: str
) -> None:
    """Send ``msg``; the device reports ``failed`` with ``code: ...fragment...`` and keeps ``serving``."""
    deployment = msg.deployment if isinstance(msg, protocol.ModelsDesired) else json.loads(msg)["deployment"]
    send(fleet, msg)
    outcome = reported(fleet, deployment)
    assert outcome["state"] == "failed", outcome
    assert str(outcome["reason"]).startswith(f"{code}: "), outcome
    assert fragment in str(outcome["reason"]), outcome
    assert console_summary(fleet).endswith(f"failed: {code}")
    assert wait_version(gateway(fleet), serving, timeout=5) == serving
    device = fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json()
    assert device["reported_models"] == {"iris": serving}


# -- the attacks, in order --------------------------------------------------------------------------
REPLAY: dict[str, bytes] = {}


def test_a_signed_update_is_installed(fleet: Fleet) -> None:
    assert wait_version(gateway(fleet), "1") == "1"
    assert fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json()["rollout_group"] == "canary"
    deploy(fleet, "2")
    REPLAY["2"] = retained_desired(fleet)  # iris 2's signed desired state, kept by an attacker
    trust = fleet.work / DEVICE / "data" / "trust"
    assert (trust / "root.json").is_file()  # moved from the trusted-keys PEM to root version 1
    assert json.loads((trust / "state.json").read_text())["releases"]["iris"] >= 1
    deploy(fleet, "3")


def test_replay_of_an_older_signed_update_is_refused(fleet: Fleet) -> None:
    refused(fleet, REPLAY["2"], "rollback_refused", "older than version", serving="3")


def test_expired_metadata_is_refused(fleet: Fleet) -> None:
    msg = legit(fleet, "2", expiry_s=1)  # signed by the cloud, held back until it expired
    time.sleep(2.0)
    refused(fleet, msg, "metadata_expired", "the cloud must re-sign it", serving="3")


def test_metadata_for_another_device_is_refused(fleet: Fleet) -> None:
    other = legit(fleet, "2")  # the real cloud's metadata for atk-1, re-signed for another device
    msg = forged(other, [key(fleet)], device="atk-other")  # (as if copied from atk-other's topic)
    refused(fleet, msg, "wrong_device", "is for device 'atk-other'", serving="3")


def test_a_forged_artifact_url_is_refused(fleet: Fleet) -> None:
    msg = legit(fleet, "2")
    evil = msg.models[0].model_copy(update={"artifact_url": "http://127.0.0.1:9/evil.tar"})
    refused(
        fleet,
        msg.model_copy(update={"models": [evil]}),
        "artifact_mismatch",
        "is not the signed",
        serving="3",
    )


def test_an_oversized_artifact_is_cut_off_at_the_signed_size(fleet: Fleet) -> None:
    msg = legit(fleet, "4")
    archive = db(fleet).parent / "artifacts" / f"{msg.models[0].artifact_sha256}.tar"
    signed_size = archive.stat().st_size
    with archive.open("ab") as fh:  # the server now sends 4 MiB more than was signed
        fh.write(b"\0" * (4 * 1024 * 1024))
    try:
        refused(fleet, msg, "artifact_too_large", f"over the limit of {signed_size}", serving="3")
    finally:
        with archive.open("r+b") as fh:
            fh.truncate(signed_size)
    # a signed size over the device's own limit (512 MiB by default) is refused before downloading
    again = legit(fleet, "4")
    assert again.targets is not None
    models = [m | {"artifact_size": 2**40} for m in again.targets.signed["models"]]
    refused(
        fleet, forged(again, [key(fleet)], models=models), "artifact_too_large", "device's limit", serving="3"
    )


def console(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_CONSOLE_")}
    env |= {"EDGE_CONSOLE_API": fleet.api, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cloud_sync.console.app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def releases(fleet: Fleet) -> int:
    state = fleet.work / DEVICE / "data" / "trust" / "state.json"
    return int(json.loads(state.read_text())["releases"]["iris"])


def test_a_signed_rollback_from_the_console_goes_back_and_cannot_be_replayed(fleet: Fleet) -> None:
    """`edge-console rollback` -> POST /devices/{id}/rollback: new targets metadata for this device,
    signed by the cloud, marked rollback, with the next release counter; reported on models/reported."""
    assert wait_version(gateway(fleet), "3") == "3"
    before = releases(fleet)
    done = console(fleet, "rollback", DEVICE, "iris", "--poll", "0.2")  # no --version: the one it ran before
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{DEVICE}: iris rolled back to 2 (was 3)", done.stdout
    assert "signed rollback from 3" in done.stdout
    assert wait_version(gateway(fleet), "2") == "2"
    last = fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json()
    assert (last["last_update"]["state"], last["last_update"]["version"]) == ("active", "2"), last
    assert last["reported_models"] == {"iris": "2"}
    assert releases(fleet) > before  # a new decision with a higher release, not a replay
    rollback_msg = retained_desired(fleet)
    signed = protocol.decode(protocol.topic(DEVICE, "models_desired"), rollback_msg)[1]
    assert isinstance(signed, protocol.ModelsDesired) and signed.targets is not None
    (entry,) = signed.targets.signed["models"]
    assert (entry["version"], entry["rollback"]) == ("2", True)

    deploy(fleet, "3")  # forward again
    # the rollback's signed metadata, kept and sent again by someone with broker credentials
    refused(fleet, rollback_msg, "rollback_refused", "older than version", serving="3")
    # a downgrade signed by the cloud with fresh counters but not marked rollback: refused too
    refused(fleet, legit(fleet, "2"), "rollback_refused", "does not mark it a rollback", serving="3")


def test_the_rollback_route_refuses_what_is_not_a_rollback(fleet: Fleet) -> None:
    url = f"{fleet.api}/devices/{DEVICE}/rollback"
    newer = fleet.cloud_http.post(url, json={"model": "iris", "version": "4"})
    assert newer.status_code == 422 and "is not older than 3" in newer.json()["error"], newer.text
    same = fleet.cloud_http.post(url, json={"model": "iris", "version": "3"})
    assert same.status_code == 422, same.text
    unknown = fleet.cloud_http.post(f"{fleet.api}/devices/nobody/rollback", json={"model": "iris"})
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"], unknown.text
    model = fleet.cloud_http.post(url, json={"model": "nosuch"})
    assert model.status_code == 422 and "reports no model 'nosuch'" in model.json()["error"], model.text
    unpublished = fleet.cloud_http.post(url, json={"model": "iris", "version": "0"})
    assert unpublished.status_code == 404, unpublished.text
    assert wait_version(gateway(fleet), "3", timeout=5) == "3"


def test_the_mqtt_rollback_and_activate_commands_are_refused(fleet: Fleet) -> None:
    """With signed updates configured, MQTT commands (anyone with broker credentials) switch nothing."""
    for name, args in (("rollback", {"model": "iris"}), ("activate", {"model": "iris", "version": "2"})):
        sent = fleet.cloud_http.post(
            f"{fleet.api}/commands", json={"device": DEVICE, "name": name, "args": args}
        )
        assert sent.status_code == 202, sent.text
        cmd = fleet.cloud_http.get(f"{fleet.api}/commands/{sent.json()['id']}", params={"wait": 30}).json()
        reply = cmd["reply"]
        assert reply is not None and reply["ok"] is False, cmd
        assert reply["result"] == {"code": "signed_update_required"}, reply
        assert (
            f"{name} refused" in reply["error"] and f"edge-console rollback {DEVICE} iris" in reply["error"]
        )
    assert wait_version(gateway(fleet), "3", timeout=5) == "3"
    assert fleet.cloud_http.get(f"{fleet.api}/devices/{DEVICE}").json()["reported_models"] == {"iris": "3"}


def cloud(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")}
    return subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", *args],
        env=base | fleet.cloud_env | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_key_is_not_trusted_after_rotation(fleet: Fleet) -> None:
    generate_keys(key(fleet, "new"))
    done = cloud(fleet, "keys", "rotate", "--new", str(key(fleet, "new")))
    assert done.returncode == 0, done.stderr
    assert "root version 2" in done.stdout
    # the next deployment, signed by the new key, carries root 2: the device follows the rotation
    done = cloud(
        fleet,
        "deploy",
        "iris",
        "4",
        "--device",
        DEVICE,
        "--base-url",
        fleet.api,
        "--key",
        str(key(fleet, "new")),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert reported(fleet, json.loads(done.stdout)["id"])["state"] == "active"
    wait_version(gateway(fleet), "4")
    # whoever still holds the old key can no longer sign for the device
    msg = forged(legit(fleet, "2", keys=[key(fleet, "new")]), [key(fleet)])
    refused(fleet, msg, "untrusted_key", "does not trust", serving="4")


def test_a_threshold_not_met_is_refused(fleet: Fleet) -> None:
    generate_keys(key(fleet, "second"))
    new, second = str(key(fleet, "new")), str(key(fleet, "second"))
    done = cloud(fleet, "keys", "rotate", "--key", new, "--new", new, "--new", second, "--threshold", "2")
    assert done.returncode == 0, done.stderr
    # the cloud itself refuses to sign with one key of two
    one = cloud(fleet, "deploy", "iris", "3", "--device", DEVICE, "--base-url", fleet.api, "--key", new)
    assert one.returncode != 0 and "1 of the 2" in one.stderr, one.stderr
    # both keys: root 3 and the metadata reach the device
    both = cloud(
        fleet,
        "deploy",
        "iris",
        "3",
        "--device",
        DEVICE,
        "--base-url",
        fleet.api,
        "--key",
        new,
        "--json",
        "--rollback",  # 4 -> 3: going down needs the signed flag
        env={"CLOUD_COSIGNING_KEY_PATHS": second},
    )
    assert both.returncode == 0, both.stderr
    assert reported(fleet, json.loads(both.stdout)["id"])["state"] == "active"
    wait_version(gateway(fleet), "3")
    # one stolen key alone is not enough
    msg = forged(legit(fleet, "2", keys=[key(fleet, "new"), key(fleet, "second")]), [key(fleet, "new")])
    refused(fleet, msg, "threshold_not_met", "1 valid signature(s) by trusted keys; 2 required", serving="3")


def test_an_explicit_signed_rollback_works(fleet: Fleet) -> None:
    trust_state = fleet.work / DEVICE / "data" / "trust" / "state.json"
    before = json.loads(trust_state.read_text())["releases"]["iris"]
    keys = ["--key", str(key(fleet, "new"))]
    env = {"CLOUD_COSIGNING_KEY_PATHS": str(key(fleet, "second"))}
    done = cloud(
        fleet,
        "deploy",
        "iris",
        "2",
        "--device",
        DEVICE,
        "--base-url",
        fleet.api,
        "--rollback",
        "--json",
        *keys,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    outcome = reported(fleet, json.loads(done.stdout)["id"])
    assert (outcome["state"], outcome["version"]) == ("active", "2"), outcome
    assert wait_version(gateway(fleet), "2") == "2"
    after = json.loads(trust_state.read_text())["releases"]["iris"]
    assert after > before  # going back is a new decision with a higher release, not a replay
