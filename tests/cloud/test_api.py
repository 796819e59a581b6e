"""The HTTP API over real HTTP (uvicorn subprocess), with the ingest role and mosquitto running;
plus the operator's other surfaces: configuration and the command line."""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync import cli
from cloud_sync.config import ENV_VARS, CloudConfig, load_config
from cloud_sync.errors import ConfigError
from cloud_sync.store import Store
from edge_agent.sync import protocol
from tests.cloud import (
    ROOT,
    Role,
    SimDevice,
    cloud_env,
    free_port,
    result_record,
    results_msg,
    running,
    sim_device,
    status_msg,
    wait_for,
)
from tests.conftest import CloudDb
from tests.sync.broker import Broker

TOKEN = "test-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api(broker: Broker, db: CloudDb, workdir: Path, ingest: Role) -> Iterator[httpx.Client]:
    port = free_port()
    env = cloud_env(broker, db, api_token=TOKEN)
    with running(Role(["api", "--port", str(port)], env, workdir / "api.log")) as role:
        role.wait_log("Uvicorn running on")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
            wait_for(
                lambda: client.get("/health").json()["broker_connected"], what="API connected to the broker"
            )
            yield client


def device_id() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


def online_device(broker: Broker, api: httpx.Client, dev: str, *, will: bool = False) -> SimDevice:
    device = SimDevice(broker, dev, will=will)
    device.publish(status_msg(dev), "status", retain=True)
    wait_for(lambda: api.get(f"/devices/{dev}").status_code == 200, what=f"{dev} known to the API")
    return device


# -- auth ------------------------------------------------------------------------------------------
def test_a_token_is_needed_everywhere_but_health(api: httpx.Client) -> None:
    bare = httpx.Client(base_url=api.base_url, timeout=10)
    assert bare.get("/health").status_code == 200
    for method, path in (
        ("GET", "/devices"),
        ("GET", "/results"),
        ("POST", "/commands"),
        ("GET", "/nowhere"),
    ):
        r = bare.request(method, path, content=b"{not json")
        assert r.status_code == 401, (method, path)
        assert r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    wrong = bare.get("/devices", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert TOKEN not in wrong.text
    bare.close()


# -- devices, results, telemetry ------------------------------------------------------------------------
def test_devices_list_and_detail(api: httpx.Client, broker: Broker) -> None:
    dev = device_id()
    device = online_device(broker, api, dev, will=True)
    try:
        listed = {d["id"]: d for d in api.get("/devices").json()["devices"]}
        assert listed[dev]["online"] is True
        assert listed[dev]["models"] == {"iris": "1"}
        detail = api.get(f"/devices/{dev}").json()
        assert detail["agent_version"] == "0.1.0"
        assert [h["state"] for h in detail["status_history"]] == ["online"]
        assert dev not in {d["id"] for d in api.get("/devices", params={"online": "false"}).json()["devices"]}
        device.kill_socket()  # the Last Will: the device shows offline
        wait_for(lambda: api.get(f"/devices/{dev}").json()["online"] is False, what="offline via the API")
        assert dev in {d["id"] for d in api.get("/devices", params={"online": "false"}).json()["devices"]}
    finally:
        device.close()
    missing = api.get("/devices/no-such-device")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no device 'no-such-device'", "code": "not_found"}


def test_results_filters_and_paging(api: httpx.Client, broker: Broker) -> None:
    dev = device_id()
    t0 = 1_600_000_000.0
    records = [
        result_record(model="iris" if i % 2 else "digits", label=f"l{i % 3}", created=t0 + i)
        for i in range(24)
    ]
    with sim_device(broker, dev) as device:
        device.publish(results_msg(dev, records[:12]), "results")
        device.publish(results_msg(dev, records[12:]), "results")
        wait_for(lambda: len(device.acked_ids()) == 24, what="24 results acked")

    def get(**params: Any) -> dict[str, Any]:
        r = api.get("/results", params={"device": dev, **params})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    seen: list[dict[str, Any]] = []
    page = get(limit=5)
    while True:
        seen.extend(page["results"])
        if page["next_cursor"] is None:
            break
        page = get(limit=5, cursor=page["next_cursor"])
    assert [r["id"] for r in seen] == [r.id for r in reversed(records)]
    assert seen[0]["body"] == {"label": "l2", "score": 0.9}
    assert [r["id"] for r in get(limit=3, order="asc")["results"]] == [r.id for r in records[:3]]
    assert [r["id"] for r in get(limit=4, offset=20)["results"]] == [r.id for r in reversed(records[:4])]
    iris = get(model="iris", label="l1")["results"]
    assert {r["id"] for r in iris} == {r.id for r in records if r.model == "iris" and r.body["label"] == "l1"}
    window = get(since=t0 + 3, until=t0 + 6)["results"]
    assert [r["created"] for r in window] == [t0 + 5, t0 + 4, t0 + 3]
    one = api.get(f"/results/{records[0].id}").json()
    assert (one["device"], one["label"], one["ingest"]) == (dev, "l0", "ingest-api")
    for params, fragment in (
        ({"cursor": "garbage!"}, "invalid cursor"),
        ({"limit": 0}, "limit"),
        ({"cursor": page["results"][0]["id"], "offset": 2}, ""),
        ({"since": "yesterday"}, "since"),
    ):
        r = api.get("/results", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["code"] == "invalid_request"
        assert fragment in r.json()["error"]


def test_telemetry_by_device(api: httpx.Client, broker: Broker) -> None:
    dev = device_id()
    with sim_device(broker, dev) as device:
        for i in range(3):
            device.publish(
                protocol.Telemetry(device=dev, ts=1000.0 + i, metrics={"cpu": i / 10}), "telemetry"
            )

        def rows() -> list[dict[str, Any]]:
            data: list[dict[str, Any]] = api.get("/telemetry", params={"device": dev}).json()["telemetry"]
            return data

        wait_for(lambda: len(rows()) == 3, what="3 telemetry rows")
    assert [r["metrics"]["cpu"] for r in rows()] == [0.2, 0.1, 0.0]
    assert api.get("/telemetry").status_code == 422  # device is required


# -- commands ------------------------------------------------------------------------------------------
def test_a_command_reaches_the_device_and_its_reply_comes_back(api: httpx.Client, broker: Broker) -> None:
    dev = device_id()
    device = online_device(broker, api, dev)
    try:
        r = api.post("/commands", json={"device": dev, "name": "ping", "args": {"n": 1}})
        assert r.status_code == 202, r.text
        sent = r.json()
        assert sent["topic"] == f"edge/{dev}/cmd"
        command, raw = wait_for(
            lambda: device.commands and device.commands[0], what="the command on the device"
        )
        assert (command.id, command.name, command.args) == (sent["id"], "ping", {"n": 1})
        assert raw.properties.ResponseTopic == f"edge/{dev}/cmd/reply"  # MQTT 5 request/response
        assert raw.properties.CorrelationData == sent["id"].encode()
        pending = api.get(f"/commands/{sent['id']}").json()
        assert (pending["state"], pending["reply"]) == ("sent", None)
        t0 = time.monotonic()
        waited = api.get(f"/commands/{sent['id']}", params={"wait": 0.3}).json()
        assert waited["reply"] is None and time.monotonic() - t0 >= 0.3
        reply = protocol.CommandReply(device=dev, id=command.id, ok=True, result={"pong": 1}, ts=time.time())
        device.publish(reply, "cmd_reply")
        done = api.get(f"/commands/{sent['id']}", params={"wait": 5}).json()
        assert done["state"] == "replied"
        assert done["reply"]["ok"] is True
        assert done["reply"]["result"] == {"pong": 1}
        assert [c["id"] for c in api.get("/commands", params={"device": dev}).json()["commands"]] == [
            sent["id"]
        ]
    finally:
        device.close()


def test_bad_commands_are_json_errors(api: httpx.Client) -> None:
    cases = (
        ({"device": "never-seen", "name": "ping"}, 404, "not_found"),
        ({"device": "x", "name": "format_disk"}, 422, "invalid_request"),
        ({"device": "bad/id", "name": "ping"}, 422, "invalid_request"),
        ({"device": "x", "name": "ping", "extra": 1}, 422, "invalid_request"),
    )
    for body, status, code in cases:
        r = api.post("/commands", json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    assert (
        api.post("/commands", content=b"{oops", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert api.get("/commands/nope").json() == {"error": "no command 'nope'", "code": "not_found"}
    assert api.get("/nowhere").json()["code"] == "http_error"


# -- models and deployments ----------------------------------------------------------------------------
def test_models_and_deployments_show_what_the_store_has(api: httpx.Client, db: CloudDb) -> None:
    store = Store(db)
    store.add_model_version("iris", "3", {"name": "iris", "version": "3"}, sha256="cd" * 32, created=5.0)
    store.create_deployment("dep-1", [{"model": "iris", "version": "3"}], ["dev-x"], created=6.0)
    store.close()
    assert {"name": "iris", "description": None, "created": 5.0, "versions": 1} in api.get("/models").json()[
        "models"
    ]
    assert api.get("/models/iris").json()["versions"][0]["sha256"] == "cd" * 32
    assert api.get("/models/none").status_code == 404
    assert [d["id"] for d in api.get("/deployments").json()["deployments"]] == ["dep-1"]
    dep = api.get("/deployments/dep-1").json()
    assert (dep["model"], dep["version"], dep["created"]) == ("iris", "3", 6.0)
    assert [(d["device"], d["state"], d["updated"]) for d in dep["devices"]] == [("dev-x", "pending", None)]


# -- configuration and the command line ------------------------------------------------------------------
def test_config_lists_every_problem_at_once() -> None:
    env = {
        "CLOUD_BROKER_PORT": "not-a-port",
        "CLOUD_API_HOST": "0.0.0.0",
        "CLOUD_BROKER_PASSWORD": "hunter2",
        "CLOUD_API_TOKN": "x",
        "CLOUD_SDK_VERSION": "470.0.0",  # another tool's variable: ignored
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    for fragment in (
        "broker_port",
        "did you mean CLOUD_API_TOKEN",
        "without broker_username",
        "not loopback",
    ):
        assert fragment in text
    assert "hunter2" not in text


def test_config_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(
        'broker_host = "mqtt.example"\nbroker_port = 8883\nbroker_tls = true\napi_token = "s3cret"\n'
    )
    config = load_config(path, env={"CLOUD_BROKER_PORT": "9999"})
    assert (config.broker_host, config.broker_port, config.broker_tls) == ("mqtt.example", 9999, True)
    assert config.redacted()["api_token"] == "***"
    assert "s3cret" not in json.dumps(config.redacted())
    assert set(ENV_VARS) == {"CLOUD_" + name.upper() for name in CloudConfig.model_fields}


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_cli_command_has_help_text() -> None:
    commands = cli_commands()
    assert set(commands) >= {"ingest", "api", "migrate", "devices", "results", "config"}
    for name, command in commands.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings}"


def test_cli_exit_codes_and_output(
    cloud_db: CloudDb, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in ENV_VARS if k in os.environ]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CLOUD_BROKER_PORT", "0")
    assert cli.main(["config"]) == cli.EXIT_CONFIG
    assert "broker_port" in capsys.readouterr().err
    monkeypatch.delenv("CLOUD_BROKER_PORT")
    db = cloud_db  # --db takes a file or a postgresql:// URL
    assert cli.main(["migrate", "--db", str(db)]) == cli.EXIT_OK
    store = Store(db)
    store.record_results(results_msg("dev-cli", [result_record()]), time.time(), "i")
    store.close()
    capsys.readouterr()
    assert cli.main(["devices", "--db", str(db), "--json"]) == cli.EXIT_OK
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["dev-cli"]
    assert cli.main(["results", "--db", str(db), "--cursor", "bad!"]) == cli.EXIT_USAGE
    assert "invalid cursor" in capsys.readouterr().err


def test_every_setting_and_command_is_documented() -> None:
    doc = (ROOT / "docs" / "cloud-sync.md").read_text()
    missing = [env for env in ENV_VARS if f"`{env}`" not in doc]
    assert not missing, f"docs/cloud-sync.md lacks {missing}"
    missing = [name for name in cli_commands() if f"cloud_sync.cli {name}" not in doc]
    assert not missing, f"docs/cloud-sync.md lacks {missing}"
