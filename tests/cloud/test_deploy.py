"""Signed model updates end to end: keys and publish through the command line, deploy through the
HTTP API (uvicorn subprocess) to devices over mosquitto (retained desired state), the ingest role
(subprocess) storing what the devices report. The devices are paho clients in this test driving the
real device-side library (``edge_agent.sync.ota``) over real model stores: one trusts the signing
key and updates, one trusts another key and refuses, one is offline during the deployment."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync import cli
from cloud_sync.deploy import generate_keys, publish
from cloud_sync.store import Store
from edge_agent.sync import protocol
from edge_agent.sync.ota import OtaSettings, OtaUpdater
from edge_agent.sync.ota_runner import OtaRunner, StoreActivator, reported
from tests.cloud import ROOT, cloud_env, running, sim_device, start_ingest, state_dir, status_msg, wait_for
from tests.conftest import MODELS, CloudDb
from tests.sync.broker import Broker
from tests.sync.ota_helpers import cloud_api, device_store, make_version

TOKEN = "deploy-token-" + uuid.uuid4().hex


class OtaDevice:
    """A device on paho: desired state -> OtaRunner; outcomes -> retained models/reported."""

    def __init__(self, broker: Broker, device: str, root: Path, trusted: Path) -> None:
        self.device = device
        self.store = device_store(root)
        self.hold = threading.Event()  # set: pause at the first download report until released
        self.release = threading.Event()
        self.outcomes: list[protocol.UpdateOutcome] = []
        settings = OtaSettings.in_data_dir(root / "data", trusted, device=device)
        self.updater = OtaUpdater(self.store, StoreActivator(self.store), settings, self._report)
        self.runner = OtaRunner(self.updater)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"ota-{device}", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(protocol.topic(device, "models_desired"), 1)
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        _, decoded = protocol.decode(msg.topic, bytes(msg.payload))
        if isinstance(decoded, protocol.ModelsDesired):
            self.runner.submit(decoded)

    def _report(self, outcome: protocol.UpdateOutcome) -> None:
        self.outcomes.append(outcome)
        models = {name: self.store.active_version(name) for name in self.store.names()}
        msg = reported(self.device, models, outcome)
        info = self.client.publish(
            protocol.topic(self.device, "models_reported"), protocol.encode(msg), qos=1, retain=True
        )
        info.wait_for_publish(5)
        if self.hold.is_set() and outcome.state == "downloading":
            self.hold.clear()
            assert self.release.wait(15)

    def close(self) -> None:
        self.runner.stop()
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, Path]:
    """The signing key pair, made by ``cloud-sync keys generate``; and a key nobody signs with."""
    private = workdir / "keys" / "signing.pem"
    done = subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", "keys", "generate", "--out", str(private)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = workdir / "keys" / "signing.pub.pem"
    assert f"public key:  {public}" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", "keys", "generate", "--out", str(private)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == cli.EXIT_USAGE and "not overwritten" in again.stderr
    other = generate_keys(workdir / "keys" / "other.pem")
    return {"private": private, "public": public, "other_public": other.public}


@pytest.fixture(scope="module")
def published(workdir: Path, db: CloudDb, keys: dict[str, Path]) -> dict[str, Any]:
    pkg = make_version(workdir / "packages", "2")
    argv = ["models", "publish", str(pkg), "--key", str(keys["private"]), "--db", str(db)]
    # artifacts go beside db_path, on PostgreSQL too (--db then names the database only)
    env = os.environ | {"CLOUD_DB_PATH": str(workdir / "cloud.sqlite3")}
    done = subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert (workdir / "artifacts" / f"{out['sha256']}.tar").is_file()  # beside the database
    return out


@pytest.fixture(scope="module")
def api(
    broker: Broker, db: CloudDb, workdir: Path, published: dict[str, Any], keys: dict[str, Path]
) -> Iterator[httpx.Client]:
    with (
        running(start_ingest(broker, db, workdir, "ingest-deploy")),
        cloud_api(db, workdir, broker.port, api_token=TOKEN, signing_key_path=str(keys["private"])) as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client,
    ):
        wait_for(lambda: client.get("/health").json()["broker_connected"], what="API connected to the broker")
        yield client


@pytest.fixture
def devices() -> Iterator[list[OtaDevice]]:
    made: list[OtaDevice] = []
    yield made
    for d in made:
        d.close()


def device_states(api: httpx.Client, deployment: str) -> dict[str, dict[str, Any]]:
    return {d["device"]: d for d in api.get(f"/deployments/{deployment}").json()["devices"]}


def test_publish_is_idempotent_and_versions_are_immutable(
    workdir: Path,
    db: CloudDb,
    keys: dict[str, Path],
    published: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUD_DB_PATH", str(workdir / "cloud.sqlite3"))  # artifacts beside it
    pkg = workdir / "packages" / "iris" / "2"
    argv = ["models", "publish", str(pkg), "--key", str(keys["private"]), "--db", str(db)]
    assert cli.main(argv) == cli.EXIT_OK  # the same package again: nothing changes
    manifest = json.loads((pkg / "manifest.json").read_text())
    (pkg / "manifest.json").write_text(json.dumps(manifest | {"description": "changed"}))
    assert cli.main(argv) == cli.EXIT_ERROR  # same version, other content
    store = Store(db)
    row = store.model_version("iris", "2")
    store.close()
    assert row["sha256"] == published["sha256"] and row["key_id"] == published["key_id"]
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def test_deployment_to_a_group_shows_per_device_progress(
    api: httpx.Client,
    broker: Broker,
    workdir: Path,
    keys: dict[str, Path],
    published: dict[str, Any],
    devices: list[OtaDevice],
    db: CloudDb,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = OtaDevice(broker, "dev-good", workdir / "dev-good", keys["public"])
    wrong = OtaDevice(broker, "dev-wrong-key", workdir / "dev-wrong-key", keys["other_public"])
    devices += [good, wrong]
    for name in ("dev-good", "dev-wrong-key", "dev-offline"):  # the cloud has heard from all three
        with sim_device(broker, f"{name}-status") as sim:
            sim.publish_raw(protocol.topic(name, "status"), protocol.encode(status_msg(name)), retain=True)
    wait_for(lambda: len(api.get("/devices").json()["devices"]) >= 3, what="three devices known")
    good.hold.set()  # pause dev-good at its first download report

    created = api.post("/deployments", json={"model": "iris", "version": "2", "all": True})
    assert created.status_code == 201, created.text
    dep = created.json()
    assert (dep["model"], dep["version"]) == ("iris", "2")
    assert {d["device"]: d["state"] for d in dep["devices"]} == {
        "dev-good": "pending",
        "dev-offline": "pending",
        "dev-wrong-key": "pending",
    }

    wait_for(lambda: device_states(api, dep["id"])["dev-good"]["state"] == "downloading", what="downloading")
    assert device_states(api, dep["id"])["dev-good"]["progress"] == 0.0
    good.release.set()
    wait_for(lambda: device_states(api, dep["id"])["dev-good"]["state"] == "active", what="dev-good active")
    wait_for(lambda: device_states(api, dep["id"])["dev-wrong-key"]["state"] == "failed", what="failed")
    states = device_states(api, dep["id"])
    assert states["dev-good"]["progress"] == 1.0 and states["dev-good"]["updated"] > dep["created"]
    assert states["dev-good"]["reason"] == "golden sample reproduced"
    assert states["dev-wrong-key"]["reason"].startswith("root_rotation_invalid: root version 1 is signed by")
    assert states["dev-offline"]["state"] == "pending"
    assert good.store.active_version("iris") == "2" and wrong.store.active_version("iris") == "1"
    assert [o.state for o in good.outcomes][-2:] == ["verifying", "active"]
    device_row = api.get("/devices/dev-wrong-key").json()
    assert device_row["reported_models"] == {"iris": "1"}
    assert device_row["last_update"]["state"] == "failed"

    # the offline device gets its retained desired state when it comes online
    late = OtaDevice(broker, "dev-offline", workdir / "dev-offline", keys["public"])
    devices.append(late)
    wait_for(lambda: device_states(api, dep["id"])["dev-offline"]["state"] == "active", what="late device")
    listed = api.get("/deployments").json()["deployments"]
    assert listed[0]["id"] == dep["id"] and listed[0]["summary"] == {"active": 2, "failed": 1}

    # going back: a signed rollback deployment to dev-good alone (to the bundled iris 1, published)
    store = Store(db)
    try:
        publish(store, MODELS / "iris" / "1", keys["private"], workdir / "artifacts")
    finally:
        store.close()
    back = api.post("/devices/dev-good/rollback", json={"model": "iris", "version": "1"})
    assert back.status_code == 201, back.text
    assert back.json()["rollback"] == {"device": "dev-good", "model": "iris", "from": "2", "to": "1"}
    wait_for(lambda: device_states(api, back.json()["id"])["dev-good"]["state"] == "active", what="back")
    assert good.store.active_version("iris") == "1"
    assert api.post("/devices/dev-good/rollback", json={"model": "iris"}).status_code == 422  # none older

    # the operator's command line over the same database
    capsys.readouterr()
    assert cli.main(["deployments", dep["id"], "--db", str(db)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "dev-wrong-key" in out and "failed" in out and "active" in out


def test_a_newer_deployment_supersedes_an_unfinished_one(api: httpx.Client, broker: Broker) -> None:
    with sim_device(broker, "dev-idle") as sim:
        sim.publish(status_msg("dev-idle"), "status", retain=True)
        wait_for(lambda: api.get("/devices/dev-idle").status_code == 200, what="dev-idle known")
        first = api.post(
            "/deployments", json={"model": "iris", "version": "2", "devices": ["dev-idle"]}
        ).json()
        second = api.post(
            "/deployments", json={"model": "iris", "version": "2", "devices": ["dev-idle"]}
        ).json()
    states = device_states(api, first["id"])
    assert states["dev-idle"]["state"] == "superseded"
    assert second["id"] in states["dev-idle"]["reason"]
    assert device_states(api, second["id"])["dev-idle"]["state"] == "pending"


def test_deployment_requests_are_checked(api: httpx.Client, db: CloudDb) -> None:
    store = Store(db)
    store.add_model_version("iris", "unsigned", {"name": "iris"}, sha256="ef" * 32, created=1.0)
    store.close()
    cases = [
        ({"model": "iris", "version": "9", "all": True}, 404, "no model version"),
        ({"model": "iris", "version": "unsigned", "all": True}, 422, "is not signed"),
        ({"model": "iris", "version": "2", "all": True, "devices": ["x"]}, 422, "not both"),
        ({"model": "iris", "version": "2"}, 422, "not neither"),
        ({"model": "iris", "version": "2", "devices": ["bad/id"]}, 422, "invalid device ids"),
        (
            {"model": "iris", "version": "2", "all": True, "artifact_base_url": "ftp://x"},
            422,
            "artifact_base_url",
        ),
    ]
    for body, status, fragment in cases:
        r = api.post("/deployments", json=body)
        assert r.status_code == status and fragment in r.json()["error"], (body, r.text)
    assert httpx.post(f"{api.base_url}deployments", json=cases[0][0]).status_code == 401
    assert api.get("/deployments/nope").status_code == 404


def test_artifacts_need_no_token(api: httpx.Client, published: dict[str, Any]) -> None:
    r = httpx.get(f"{api.base_url}artifacts/{published['sha256']}", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and len(r.content) == 10
    assert httpx.get(f"{api.base_url}models").status_code == 401


def retained(broker: Broker, topic: str) -> bytes:
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peek-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, 1)
        wait_for(lambda: got, what=f"retained message on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_deploy_from_the_command_line(
    broker: Broker, db: CloudDb, api: httpx.Client, published: dict[str, Any], keys: dict[str, Path]
) -> None:
    argv = ["deploy", "iris", "2", "--device", "dev-cli", "--base-url", "https://cloud.example/", "--json"]
    argv += ["--key", str(keys["private"])]
    done = subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", *argv],
        cwd=ROOT,
        env=cloud_env(broker, db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [(d["device"], d["state"]) for d in status["devices"]] == [("dev-cli", "pending")]
    _, msg = protocol.decode(
        protocol.topic("dev-cli", "models_desired"),
        retained(broker, protocol.topic("dev-cli", "models_desired")),
    )
    assert isinstance(msg, protocol.ModelsDesired) and msg.deployment == status["id"]
    (signed,) = msg.models
    assert signed.artifact_url == f"https://cloud.example/artifacts/{published['sha256']}"
    assert (signed.key_id, signed.artifact_sha256) == (published["key_id"], published["sha256"])
    assert msg.targets is not None and msg.targets.signed["device"] == "dev-cli"  # signed for it alone
    (entry,) = msg.targets.signed["models"]
    assert (entry["artifact_url"], entry["artifact_sha256"]) == (signed.artifact_url, published["sha256"])
    assert (
        entry["artifact_size"] == (state_dir(db) / "artifacts" / f"{published['sha256']}.tar").stat().st_size
    )
    assert api.get(f"/deployments/{status['id']}").json()["devices"][0]["state"] == "pending"
