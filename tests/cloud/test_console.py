"""edge-console against the real cloud: mosquitto, the ingest role and the API as subprocesses, a
fleet of simulated devices on paho that answer commands and play out deployments (they receive the
retained models/desired the API publishes and report outcomes on models/reported), and the CLI run
as a real subprocess (``python -m cloud_sync.console.app``) in the main tests."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import typer

from cloud_sync.console import app as console_app
from cloud_sync.console.client import (
    ApiUnreachable,
    CommandTimeout,
    ConsoleClient,
    ResultFilter,
)
from cloud_sync.deploy import generate_keys
from cloud_sync.errors import NotFound, Unauthorized
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
    start_ingest,
    state_dir,
    status_msg,
    wait_for,
)
from tests.conftest import CloudDb
from tests.sync.broker import Broker

TOKEN = "console-token-" + uuid.uuid4().hex
FLEET = ("con-a", "con-b", "con-mute")  # con-mute never answers commands
BAD_VERSION = "9-bad"  # devices fail to activate this version


# -- the simulated fleet ------------------------------------------------------------------------
class FleetDevice(SimDevice):
    """A SimDevice that answers commands (unless mute) and plays out every deployment it is sent."""

    def __init__(self, broker: Broker, device: str, *, answers: bool = True) -> None:
        self.answers = answers
        self.desired: list[protocol.ModelsDesired] = []
        super().__init__(broker, device, will=True)
        self._subscribed.clear()
        self.client.subscribe(protocol.topic(device, "models_desired"), 1)
        if not self._subscribed.wait(5):
            raise AssertionError("fleet device: no SUBACK for models/desired")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        _, decoded = protocol.decode(msg.topic, bytes(msg.payload))
        if isinstance(decoded, protocol.ModelsDesired):
            self.desired.append(decoded)
            threading.Thread(target=self._roll_out, args=(decoded,), daemon=True).start()
            return
        super()._on_message(client, userdata, msg)
        if isinstance(decoded, protocol.Command) and self.answers:
            reply = self._answer(decoded)
            client.publish(protocol.topic(self.device, "cmd_reply"), protocol.encode(reply), qos=1)

    def _answer(self, cmd: protocol.Command) -> protocol.CommandReply:
        ok, error = True, None
        result: dict[str, Any] | None = {"pong": True}
        if cmd.name == "rollback":
            result = {"model": cmd.args.get("model"), "version": "1", "previous": "2"}
        elif cmd.name == "set_config":
            ok, result, error = False, None, f"cannot change {sorted(cmd.args)} at run time"
        return protocol.CommandReply(
            device=self.device, id=cmd.id, ok=ok, result=result, error=error, ts=time.time()
        )

    def _roll_out(self, desired: protocol.ModelsDesired) -> None:
        manifest = desired.models[0].manifest
        model, version = str(manifest["name"]), str(manifest["version"])
        final = ("failed", "self-test failed") if version == BAD_VERSION else ("active", None)
        for state, progress, reason in (
            ("downloading", 0.5, None),
            ("downloading", 1.0, None),
            ("verifying", None, None),
            (*final[:1], None, final[1]),
        ):
            time.sleep(0.3)
            outcome = protocol.UpdateOutcome(
                deployment=desired.deployment,
                model=model,
                version=version,
                state=state,
                reason=reason,
                progress=progress,
                ts=time.time(),
            )
            models = {model: version} if state == "active" else {}
            reported = protocol.ModelsReported(
                device=self.device, models=models, last_update=outcome, ts=time.time()
            )
            self.publish(reported, "models_reported", retain=True)

    def received(self, name: str) -> list[protocol.Command]:
        return [c for c, _ in self.commands if c.name == name]


# -- fixtures ------------------------------------------------------------------------------------
def signing_key(workdir: Path) -> Path:
    """The key the API signs update metadata with (the devices here do not verify it)."""
    path = workdir / "keys" / "signing.pem"
    if not path.exists():
        generate_keys(path)
    return path


@pytest.fixture(scope="module")
def api_url(broker: Broker, db: CloudDb, workdir: Path) -> Iterator[str]:
    port = free_port()
    with (
        running(start_ingest(broker, db, workdir, "ingest-console")),
        running(
            Role(
                ["api", "--port", str(port)],
                cloud_env(broker, db, api_token=TOKEN, signing_key_path=str(signing_key(workdir))),
                workdir / "api.log",
            )
        ) as api,
    ):
        api.wait_log("Uvicorn running on")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/health").json()["broker_connected"], what="API on the broker")
        yield url


@pytest.fixture(scope="module")
def fleet(broker: Broker, api_url: str) -> Iterator[dict[str, FleetDevice]]:
    devices = {name: FleetDevice(broker, name, answers=name != "con-mute") for name in FLEET}
    try:
        for depth, (name, dev) in enumerate(devices.items()):
            dev.publish(status_msg(name), "status", retain=True)
            dev.publish(
                protocol.Telemetry(device=name, ts=time.time(), metrics={"outbox_depth": depth}), "telemetry"
            )
        with ConsoleClient(api_url, TOKEN) as client:
            wait_for(
                lambda: sum(d.telemetry is not None for d in client.devices()) == len(FLEET),
                what="the fleet and its telemetry in the API",
            )
        yield devices
    finally:
        for dev in devices.values():
            dev.close()


@pytest.fixture(scope="module")
def published(db: CloudDb) -> None:
    """iris 2 and iris BAD_VERSION as signed versions in the store (the devices here do not verify)."""
    store = Store(db)
    for version in ("2", BAD_VERSION):
        store.add_model_version(
            "iris",
            version,
            {"name": "iris", "version": version},
            sha256="ab" * 32,
            created=time.time(),
            artifact_url=f"/artifacts/{'ab' * 32}",
            signature="c2lnbmF0dXJl",
            key_id="test-key",
        )
    (state_dir(db) / "artifacts").mkdir(exist_ok=True)
    (state_dir(db) / "artifacts" / f"{'ab' * 32}.tar").write_bytes(b"not a real archive")  # signed size
    store.close()


# -- running the console ---------------------------------------------------------------------------
def console_env(api: str, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_CONSOLE_")}
    env |= {"EDGE_CONSOLE_API": api, "PYTHONPATH": str(ROOT)}
    return env | ({"EDGE_CONSOLE_TOKEN": token} if token else {})


def console(
    api: str, *args: str, token: str | None = TOKEN, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m cloud_sync.console.app ARGS`` (api and token from the environment), output piped."""
    return subprocess.run(
        [sys.executable, "-m", "cloud_sync.console.app", *args],
        cwd=ROOT,
        env=console_env(api, token),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ``python -m cloud_sync.console.app`` with Ctrl-C working as on a terminal: a shell that runs the tests
# in the background (``make test &``) starts them with SIGINT ignored, the console inherits that and
# Python then installs no KeyboardInterrupt handler (the interrupt tests would hang).
CONSOLE_WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('cloud_sync.console.app', run_name='__main__', alter_sys=True)"
)


class Streaming:
    """A long-running console (--follow, --watch): its stdout lines collected by a thread."""

    def __init__(self, api: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSOLE_WITH_CTRL_C, *args],
            cwd=ROOT,
            env=console_env(api),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 15) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and self._reader.is_alive() is False:
                raise AssertionError(f"console exited {self.proc.returncode}: {self.lines}")
            return next((line for line in self.lines if needle in line), None)

        line: str = wait_for(found, timeout, f"{needle!r} in the console's output")
        return line

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        self._reader.join(5)
        return self.proc.returncode, err


def run_main(
    capsys: pytest.CaptureFixture[str], api: str, *args: str, token: str = TOKEN
) -> tuple[int, str, str]:
    """The console in this process (for the quicker checks): exit code, stdout, stderr."""
    capsys.readouterr()
    code = console_app.main(["--api", api, "--token", token, *args])
    out, err = capsys.readouterr()
    return code, out, err


def row(output: str, first: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [first])


# -- devices ---------------------------------------------------------------------------------------
def test_devices_lists_the_fleet_with_online_state(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    done = console(api_url, "devices")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["DEVICE", "STATE", "LAST", "SEEN", "AGENT", "MODELS", "OUTBOX", "LAST", "UPDATE"]
    for depth, name in enumerate(FLEET):
        cells = row(done.stdout, name)
        assert cells[1] == "online"
        assert cells[-4:] == ["0.1.0", "iris@1", str(depth), "-"]  # no update reported yet
        assert cells[-5] == "ago"
    assert "\x1b[" not in done.stdout  # no colour when not a terminal


def test_devices_watch_refreshes_until_interrupted(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    watch = Streaming(api_url, "devices", "--watch", "--interval", "0.2")
    wait_for(lambda: sum(line.startswith("DEVICE") for line in watch.lines) >= 2, what="two refreshes")
    code, err = watch.interrupt()
    assert code == 0, err
    assert sum(line.startswith("con-a ") for line in watch.lines) >= 2


def test_the_library_returns_typed_devices(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    with ConsoleClient(api_url, TOKEN) as client:
        devices = {d.id: d for d in client.devices()}
        assert [devices[name].outbox_depth for name in FLEET] == [0, 1, 2]
        assert devices["con-b"].online is True and devices["con-b"].models == {"iris": "1"}
        assert client.device("con-a").agent_version == "0.1.0"
        with pytest.raises(NotFound, match="no device 'nope'"):
            client.device("nope")
    with ConsoleClient(api_url, "wrong") as client, pytest.raises(Unauthorized):
        client.devices()
    with ConsoleClient(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(ApiUnreachable):
        client.devices()


# -- results ---------------------------------------------------------------------------------------
def test_results_filters(
    api_url: str, fleet: dict[str, FleetDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    now, old = time.time(), 1_600_000_000.0
    a = [
        result_record(model="iris", label="setosa", created=now - 10),
        result_record(model="iris", label="virginica", created=now - 5),
        result_record(model="digits", label="7", created=now - 1),
        result_record(model="iris", label="setosa", created=old),
    ]
    b = [result_record(model="iris", label="setosa", created=now - 3)]
    fleet["con-a"].publish(results_msg("con-a", a), "results")
    fleet["con-b"].publish(results_msg("con-b", b), "results")
    wait_for(
        lambda: len(fleet["con-a"].acked_ids()) >= 4 and fleet["con-b"].acked_ids(), what="results acked"
    )

    done = console(api_url, "results", "--device", "con-a", "--model", "iris", "--since", "1h")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["CREATED", "DEVICE", "MODEL", "LABEL", "SCORE", "ID"]
    assert [line.split()[-1] for line in lines[1:]] == [a[1].id, a[0].id]  # newest first, old one excluded
    assert row(done.stdout.replace(lines[0], ""), lines[1].split()[0])[2:6] == [
        "con-a",
        "iris@1",
        "virginica",
        "0.900",
    ]

    code, out, _ = run_main(capsys, api_url, "results", "--label", "setosa", "--limit", "100")
    assert code == 0
    assert {line.split()[-1] for line in out.splitlines()[1:]} >= {a[0].id, a[3].id, b[0].id}
    assert a[1].id not in out

    code, out, err = run_main(capsys, api_url, "results", "--device", "con-a", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 3
    cursor = err.split("--cursor ")[1].strip()
    code, out, _ = run_main(
        capsys, api_url, "results", "--device", "con-a", "--limit", "2", "--cursor", cursor
    )
    assert [line.split()[-1] for line in out.splitlines()[1:]] == [a[0].id, a[3].id]

    code, out, _ = run_main(capsys, api_url, "results", "--device", "con-b", "--json")
    assert [r["id"] for r in json.loads(out)["results"]] == [b[0].id]
    code, _, err = run_main(capsys, api_url, "results", "--since", "last tuesday")
    assert code == console_app.EXIT_USAGE
    assert err.startswith("edge-console: Invalid value for --since") and err.count("\n") == 1


def test_results_follow_tails_new_and_late_results(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    dev = fleet["con-b"]
    before = result_record(label="before")
    dev.publish(results_msg("con-b", [before]), "results")
    wait_for(lambda: before.id in dev.acked_ids(), what="the first result acked")
    tail = Streaming(api_url, "results", "--follow", "--device", "con-b", "--limit", "1")
    tail.wait_line(before.id)  # the backlog: the console is following from here on
    first = result_record(label="fresh")
    dev.publish(results_msg("con-b", [first]), "results")
    assert tail.wait_line(first.id).split()[2:5] == ["con-b", "iris@1", "fresh"]
    late = result_record(label="late", created=first.created - 60)  # uploaded late from an outbox
    dev.publish(results_msg("con-b", [late]), "results")
    tail.wait_line(late.id)
    code, err = tail.interrupt()
    assert code == 0, err
    assert sum(first.id in line for line in tail.lines) == 1  # shown once


def test_the_library_tails_results(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    dev = fleet["con-a"]
    old, new = result_record(model="digits", label="1"), result_record(model="digits", label="3")
    dev.publish(results_msg("con-a", [old]), "results")
    wait_for(lambda: old.id in dev.acked_ids(), what="the first result acked")
    got: list[str] = []

    def follow() -> None:
        with ConsoleClient(api_url, TOKEN) as client:
            for r in client.tail_results(ResultFilter(device="con-a", model="digits"), backlog=1, poll_s=0.1):
                got.append(r.id)
                if len(got) == 2:
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_for(lambda: got == [old.id], what="the backlog")
    dev.publish(results_msg("con-a", [new]), "results")
    thread.join(15)
    assert got == [old.id, new.id]


# -- commands ---------------------------------------------------------------------------------------
def test_send_ping_prints_the_devices_reply(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    done = console(api_url, "send", "con-a", "ping", "n:=1", "note=hello")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pong": True}
    assert fleet["con-a"].received("ping")[-1].args == {"n": 1, "note": "hello"}


def test_send_timeout_is_one_clear_line_and_non_zero(api_url: str, fleet: dict[str, FleetDevice]) -> None:
    done = console(api_url, "send", "con-mute", "ping", "--wait", "1")
    assert done.returncode == console_app.EXIT_TIMEOUT
    assert done.stdout == ""
    assert done.stderr.startswith("edge-console: no reply from con-mute to ping within 1 s")
    assert done.stderr.count("\n") == 1
    assert fleet["con-mute"].received("ping")  # it arrived; the device just never answered
    with ConsoleClient(api_url, TOKEN) as client, pytest.raises(CommandTimeout):
        client.send("con-mute", "status", wait_s=0.2)


def test_an_error_reply_exits_non_zero(
    api_url: str, fleet: dict[str, FleetDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, api_url, "send", "con-b", "set_config", "colour=blue")
    assert code == console_app.EXIT_ERROR
    assert out == ""
    assert (
        err == "edge-console: con-b answered set_config with an error: cannot change ['colour'] at run time\n"
    )
    code, out, _ = run_main(capsys, api_url, "send", "con-b", "set_config", "colour=blue", "--json")
    assert code == console_app.EXIT_ERROR and json.loads(out)["ok"] is False


def test_rollback_signs_a_rollback_deployment_and_sends_no_command(
    api_url: str,
    db: CloudDb,
    fleet: dict[str, FleetDevice],
    published: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`edge-console rollback` asks the cloud (POST /devices/{id}/rollback) for new signed metadata
    marked rollback; no MQTT command is sent (devices with signed updates refuse one)."""
    store = Store(db)
    store.add_model_version(
        "iris",
        "1",
        {"name": "iris", "version": "1"},
        sha256="ab" * 32,
        created=time.time(),
        artifact_url=f"/artifacts/{'ab' * 32}",
        signature="c2lnbmF0dXJl",
        key_id="test-key",
    )
    store.close()
    with ConsoleClient(api_url, TOKEN) as client:
        up = client.deploy("iris", "2", ["con-a"])
        assert list(client.watch_deployment(up, poll_s=0.1, timeout_s=20))[-1].devices[0].state == "active"
    commands_before = len(fleet["con-a"].received("rollback"))
    code, out, err = run_main(capsys, api_url, "rollback", "con-a", "iris", "--poll", "0.1")
    assert code == 0, err
    assert out.splitlines()[-1] == "con-a: iris rolled back to 1 (was 2)", out
    desired = fleet["con-a"].desired[-1]
    assert desired.targets is not None and desired.models[0].manifest["version"] == "1"
    assert [(m["version"], m["rollback"]) for m in desired.targets.signed["models"]] == [("1", True)]
    assert len(fleet["con-a"].received("rollback")) == commands_before
    code, out, err = run_main(capsys, api_url, "rollback", "con-a", "iris", "--version", "2")
    assert code == console_app.EXIT_USAGE and "is not older than 1" in err, (code, err)


def test_errors_are_one_line_with_their_exit_code(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cases = (
        (api_url, ("send", "never-seen", "ping"), "wrong", console_app.EXIT_UNAUTHORIZED, "pass --token"),
        (
            api_url,
            ("send", "never-seen", "ping"),
            TOKEN,
            console_app.EXIT_NOT_FOUND,
            "no device 'never-seen'",
        ),
        (api_url, ("send", "con-a", "reboot"), TOKEN, console_app.EXIT_USAGE, "'reboot' is not one of"),
        (api_url, ("send", "con-a", "ping", "=x"), TOKEN, console_app.EXIT_USAGE, "key=value"),
        (api_url, ("deploy", "iris", "2"), TOKEN, console_app.EXIT_USAGE, "--all"),
        (
            f"http://127.0.0.1:{free_port()}",
            ("devices",),
            TOKEN,
            console_app.EXIT_UNREACHABLE,
            "cannot reach",
        ),
    )
    for api, args, token, expected, fragment in cases:
        code, _, err = run_main(capsys, api, *args, token=token)
        assert code == expected, (args, err)
        assert err.startswith("edge-console: ") and err.count("\n") == 1, err
        assert fragment in err, err
        assert TOKEN not in err and "Traceback" not in err


# -- deployments --------------------------------------------------------------------------------------
def test_deploy_all_shows_progress_until_every_device_is_active(
    api_url: str, fleet: dict[str, FleetDevice], published: None
) -> None:
    done = console(api_url, "deploy", "iris", "2", "--all", "--poll", "0.1", "--timeout", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("deployment ") and lines[0].endswith(": iris 2")
    for name in FLEET:
        states = [line.split()[1:] for line in lines if line.split()[0] == name]
        assert states[-1] == ["active"], states
        assert {"downloading", "verifying"} & {state[0] for state in states[1:-1]}, states
        assert fleet[name].desired[-1].deployment == lines[0].split()[1].rstrip(":")
    assert lines[-1] == f"{len(FLEET)} of {len(FLEET)} devices active"


def test_deploy_exits_non_zero_when_a_device_fails(
    api_url: str, fleet: dict[str, FleetDevice], published: None
) -> None:
    done = console(api_url, "deploy", "iris", BAD_VERSION, "--to", "con-a,con-b", "--poll", "0.1")
    assert done.returncode == console_app.EXIT_ERROR
    assert done.stdout.splitlines()[-1] == "0 of 2 devices active"
    assert done.stderr.splitlines() == [
        "edge-console: con-a failed: self-test failed",
        "edge-console: con-b failed: self-test failed",
    ]
    assert all(d.models[0].manifest["version"] != BAD_VERSION for d in fleet["con-mute"].desired)


def test_deploy_on_a_terminal_draws_progress_bars(
    api_url: str, fleet: dict[str, FleetDevice], published: None
) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud_sync.console.app",
            "deploy",
            "iris",
            "2",
            "--to",
            "con-b",
            "--poll",
            "0.1",
        ],
        cwd=ROOT,
        env=console_env(api_url) | {"TERM": "xterm", "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the console closed its terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(30) == 0
    screen = b"".join(chunks).decode()
    assert "━" in screen and "100%" in screen and "\x1b[" in screen
    assert "active" in screen and "1 of 1 devices active" in screen


# -- staged rollouts ----------------------------------------------------------------------------------
def test_rollout_start_show_pause_resume_abort(
    api_url: str, fleet: dict[str, FleetDevice], published: None
) -> None:
    done = console(api_url, "rollout", "start", "iris", "2", "--to", "con-a,con-b", "--min-samples", "100000")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("rollout ") and first.endswith("iris 2 running")
    rollout_id = first.split()[1].rstrip(":")
    assert (
        "  wave 1 pending" in done.stdout and "    con-a" in done.stdout and "  wave 2 pending" in done.stdout
    )
    shown = console(api_url, "rollout", "show", rollout_id)
    assert shown.returncode == 0 and f"rollout {rollout_id}: iris 2" in shown.stdout
    assert rollout_id in console(api_url, "rollout", "show").stdout  # the list
    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        acted = console(api_url, "rollout", action, rollout_id)
        assert acted.returncode == 0, acted.stderr
        assert acted.stdout.startswith(f"rollout {rollout_id}: {state}")
    again = console(api_url, "rollout", "resume", rollout_id)  # an aborted rollout cannot resume
    assert again.returncode != 0 and "is aborted, not paused" in again.stderr
    nobody = console(api_url, "rollout", "start", "iris", "2", "--groups", "canary,*")  # no device reports it
    assert nobody.returncode != 0 and "no device reports the rollout group 'canary'" in nobody.stderr


# -- help ----------------------------------------------------------------------------------------------
def test_every_command_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    group = typer.main.get_command(console_app.app)
    assert isinstance(group, typer.core.TyperGroup)
    commands = group.commands
    assert set(commands) == {"devices", "results", "send", "deploy", "rollback", "bench", "rollout"}
    for param in group.params:
        assert isinstance(param, typer.core.TyperOption) and param.help, param.name
    rollout = commands["rollout"]
    assert isinstance(rollout, typer.core.TyperGroup)
    assert set(rollout.commands) == {"start", "show", "pause", "resume", "abort"}
    leaves = {n: c for n, c in commands.items() if n != "rollout"}
    leaves |= {f"rollout {n}": c for n, c in rollout.commands.items()}
    for name, command in leaves.items():
        assert command.help, name
        for param in command.params:
            assert isinstance(param, typer.core.TyperOption | typer.core.TyperArgument), param
            assert param.help, f"{name} {param.name}"
        capsys.readouterr()
        assert console_app.main([*name.split(), "--help"]) == 0
        assert "Usage: edge-console " + name in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-m", "cloud_sync.console.app", "--help"],
        cwd=ROOT,
        env=console_env("http://x", token="s3cret-" + TOKEN),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert all(name in done.stdout for name in commands)
    assert "s3cret" not in done.stdout


def test_parsing_of_since_and_command_args() -> None:
    now = 1_700_000_000.0
    assert console_app.parse_since("90s", now) == now - 90
    assert console_app.parse_since("2h", now) == now - 7200
    assert console_app.parse_since("1600000000", now) == 1_600_000_000.0
    assert console_app.parse_since("2020-09-13T12:26:40+00:00", now) == 1_600_000_000.0
    assert console_app.parse_command_args(["a=1", "b:=1", 'c:={"x": [1]}', "d=x=y"]) == {
        "a": "1",
        "b": 1,
        "c": {"x": [1]},
        "d": "x=y",
    }


# -- last: a device going offline (an --all deployment after this would wait for it) ------------------
def test_a_device_that_drops_shows_offline(
    api_url: str, broker: Broker, fleet: dict[str, FleetDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    gone = SimDevice(broker, "con-gone", will=True)
    gone.publish(status_msg("con-gone"), "status", retain=True)
    with ConsoleClient(api_url, TOKEN) as client:
        wait_for(lambda: any(d.id == "con-gone" and d.online for d in client.devices(telemetry=False)))
        gone.kill_socket()
        wait_for(lambda: client.device("con-gone").online is False, what="con-gone offline")
    gone.close()
    code, out, _ = run_main(capsys, api_url, "devices")
    assert code == 0
    assert row(out, "con-gone")[1] == "offline"
    assert row(out, "con-gone")[-1] == "-"  # no telemetry, no outbox depth
    assert row(out, "con-a")[1] == "online"


def test_every_command_option_and_exit_code_is_documented() -> None:
    doc = (ROOT / "docs" / "console.md").read_text()
    group = typer.main.get_command(console_app.app)
    assert isinstance(group, typer.core.TyperGroup)
    missing = [f"edge-console {name}" for name in group.commands if f"**`edge-console {name}`**" not in doc]
    for name, command in group.commands.items():
        missing += [
            f"{name} {o}" for p in command.params for o in p.opts if o.startswith("--") and o not in doc
        ]
    missing += [f"exit {code}" for _, code in console_app.EXIT_CODES if f"\n| {code} |" not in doc]
    assert not missing, f"docs/console.md lacks {missing}"


def test_a_result_line_says_when_its_time_is_not_the_devices_own() -> None:
    from cloud_sync.console.client import Result
    from cloud_sync.console.views import _result_line

    r = Result(
        id="r1", device="d", model="iris", version="1", created=1_764_350_000.0,
        time_flag="corrected", device_created=978_307_260.0,
    )  # fmt: skip
    assert _result_line(r).endswith("r1  (corrected by +786042740 s)")
    assert _result_line(r.model_copy(update={"time_flag": "unsynced"})).endswith("r1  (unsynced)")
    assert _result_line(r.model_copy(update={"time_flag": None})).endswith("r1")
