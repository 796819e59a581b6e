"""balena.yml, the device's compose file, the images and the unit file: parsed and checked.

The compose file is validated against two published JSON schemas vendored in
``schemas/`` (see its README): the Compose Specification schema, and the compose
file format 2.4 schema that balena's own parser (resin-compose-parse) validated with;
balena's device supervisor implements compose 2.x. balena.yml has no published schema:
its checks are the rules balena documents (deploy-with-balena-button, update
strategies, compose labels) and the ones the balena CLI enforces (``type`` is
sw.application or sw.block, ``version`` is semver).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from edge_agent.cli import build_parser
from edge_agent.config import ENV_CONFIG_FILE, ENV_VARS, SECTION_ENV_VARS, load_config
from edge_agent.roles import ROLES

ROOT = Path(__file__).resolve().parents[2]
FW = ROOT / "firmware_images"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE = FW / "docker-compose.yml"
BALENA_YML = ROOT / "balena.yml"
TEMPLATE = FW / "Dockerfile.template"
DOCKERFILE = FW / "Dockerfile"
UNIT = FW / "edge-agent.service"

# balena device types of the 64-bit Raspberry Pi boards (all aarch64)
PI_64BIT = {
    "raspberrypi3-64",
    "raspberrypi4-64",
    "raspberrypi400-64",
    "raspberrypicm4-ioboard",
    "raspberrypi5",
    "raspberrypi0-2w-64",
}

# service fields balena's supervisor supports (docs: reference/supervisor/docker-compose),
# minus oom_kill_disable, which its current parser (@balena/compose-parser) refuses
BALENA_SERVICE_FIELDS = {
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "cpu_shares", "cpu_quota", "cpus",
    "cpuset", "devices", "depends_on", "dns", "dns_opt", "dns_search", "domainname", "entrypoint",
    "environment", "expose", "extra_hosts", "group_add", "healthcheck", "hostname", "image", "init",
    "ipc", "labels", "mac_address", "mem_limit", "mem_reservation", "network_mode", "networks",
    "oom_score_adj", "pid", "pids_limit", "ports", "privileged", "read_only", "restart",
    "security_opt", "shm_size", "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "ulimits",
    "user", "userns_mode", "volumes", "working_dir",
}  # fmt: skip
BALENA_BUILD_FIELDS = {
    "context",
    "dockerfile",
    "args",
    "cache_from",
    "extra_hosts",
    "labels",
    "shm_size",
    "target",
}
BALENA_FEATURE_LABELS = {
    "io.balena.features.balena-socket",
    "io.balena.features.dbus",
    "io.balena.features.sysfs",
    "io.balena.features.procfs",
    "io.balena.features.kernel-modules",
    "io.balena.features.firmware",
    "io.balena.features.journal-logs",
    "io.balena.features.supervisor-api",
    "io.balena.features.balena-api",
}
UPDATE_STRATEGIES = {"download-then-kill", "kill-then-download", "delete-then-download", "hand-over"}
# documented top-level keys of balena.yml (deploy-with-balena-button, build variables/secrets)
BALENA_YML_KEYS = {
    "version", "name", "slug", "type", "description", "joinable", "assets", "data",
    "post-provisioning", "build-variables", "build-secrets",
}  # fmt: skip
BALENA_YML_DATA_KEYS = {
    "defaultDeviceType",
    "supportedDeviceTypes",
    "applicationEnvironmentVariables",
    "applicationConfigVariables",
    "description",
}
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
COMPILERS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|c\+\+|make|cmake|ninja|build-essential|[\w.+-]+-dev|cargo|rustc|cython)\b"
)


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def balena_yml() -> dict[str, Any]:
    doc = yaml.safe_load(BALENA_YML.read_text())
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def fleet_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for item in balena_yml()["data"].get("applicationEnvironmentVariables", []):
        ((key, value),) = item.items()
        out[str(key)] = str(value)
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV values of the last stage (the image the services run)."""
    last_stage = path.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def stages(path: Path) -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next."""
    text = path.read_text().replace("\\\n", " ")
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return [p for p in parts if p.startswith("FROM ")]


def instructions(stage: str, keyword: str) -> list[str]:
    return [line[len(keyword) + 1 :].strip() for line in stage.splitlines() if line.startswith(keyword + " ")]


def balena_read_vars() -> set[str]:
    """BALENA_* names the agent's code reads."""
    found: set[str] = set()
    for py in (ROOT / "edge_agent").rglob("*.py"):
        found.update(re.findall(r"\bBALENA_[A-Z0-9_]+\b", py.read_text()))
    return found


# -- compose: schemas and balena's rules ------------------------------------------------------------
@pytest.mark.parametrize("schema", ["compose-spec.json", "config_schema_v2.4.json"])
def test_compose_validates_against_published_schema(schema: str) -> None:
    validator = jsonschema_rs.validator_for(json.loads((SCHEMAS / schema).read_text()))
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # and the validator does reject what the schema forbids
    broken = compose() | {"services": {"x": {"image": "a", "no_such_field": 1}}}
    assert not validator.is_valid(broken)


def test_compose_follows_balena_rules() -> None:
    doc = compose()
    assert str(doc["version"]).startswith("2."), "balena's supervisor implements compose file format 2.x"
    assert not {"secrets", "configs"} & set(doc), "top-level secrets/configs are not supported by balena"
    named_volumes = set(doc.get("volumes") or {})
    for name, svc in services().items():
        unsupported = set(svc) - BALENA_SERVICE_FIELDS
        assert not unsupported, f"{name}: fields balena does not support: {unsupported}"
        assert set(svc.get("build") or {}) <= BALENA_BUILD_FIELDS, name
        assert svc.get("restart", "always") in {"no", "always", "on-failure", "unless-stopped"}, name
        assert svc.get("network_mode", "bridge") in {"bridge", "host", "none"}, name
        assert isinstance(svc.get("depends_on", []), list), f"{name}: balena takes depends_on as a list only"
        for volume in svc.get("volumes", []):
            assert isinstance(volume, str), f"{name}: balena takes the short volume syntax only"
            source = volume.split(":", 1)[0]
            assert source in named_volumes, (
                f"{name}: {volume} is a bind mount; balena allows named volumes only"
            )
        for label, value in (svc.get("labels") or {}).items():
            if label.startswith("io.balena."):
                assert (
                    label in BALENA_FEATURE_LABELS
                    or label in {"io.balena.update.strategy", "io.balena.update.handover-timeout"}
                    or label.startswith("io.balena.features.requires.")
                ), f"{name}: unknown balena label {label}"
            if label == "io.balena.update.strategy":
                assert value in UPDATE_STRATEGIES, f"{name}: {value}"
            if label in BALENA_FEATURE_LABELS:
                assert str(value) == "1", f"{name}: {label} is enabled with '1'"


def test_compose_services_share_one_image_and_the_data_volume() -> None:
    builds = {json.dumps(svc.get("build"), sort_keys=True) for svc in services().values()}
    assert len(builds) == 1, "every role runs the same image"
    (build,) = [svc["build"] for svc in list(services().values())[:1]]
    assert build["dockerfile"] == "firmware_images/Dockerfile.template"
    for name, svc in services().items():
        assert "edge-data:/data" in svc["volumes"], name
        assert svc["restart"] == "always", name
        assert svc["labels"]["io.balena.update.strategy"] == "download-then-kill", name


def test_every_service_command_is_a_role_of_the_cli() -> None:
    parser = build_parser()
    roles_run = set()
    for name, svc in services().items():
        command = svc["command"]
        assert isinstance(command, list) and command[0] == "edge-agent", f"{name}: {command}"
        assert command[1] in ROLES, f"{name}: {command[1]} is not in edge_agent/roles.py"
        args = parser.parse_args(command[1:])  # exits (fails the test) on a bad argument
        assert args.command == command[1]
        roles_run.add(command[1])
    missing = set(ROLES) - {"up"} - roles_run
    assert not missing, f"roles without a service in {COMPOSE.name}: {sorted(missing)}"


def test_http_roles_have_health_checks_on_their_ports() -> None:
    svcs = services()
    env = service_env(svcs["gateway"])
    models = json.loads(env["EDGE_SERVICES__MODELS"])
    assert svcs["gateway"]["healthcheck"]["test"] == ["CMD", "edge-healthcheck"]
    assert svcs["prep"]["healthcheck"]["test"] == ["CMD", "edge-healthcheck", env["EDGE_SERVICES__PREP_PORT"]]
    assert env["EDGE_SERVICES__PREP_URL"].endswith(":" + env["EDGE_SERVICES__PREP_PORT"])
    model_services = {s["command"][2]: s for s in svcs.values() if s["command"][1] == "model"}
    assert set(model_services) == set(models)
    for model, svc in model_services.items():
        port = models[model].rsplit(":", 1)[1]
        assert svc["healthcheck"]["test"] == ["CMD", "edge-healthcheck", port], model
    for name, svc in svcs.items():
        if svc["command"][1] in {"worker", "batch", "camera", "sync"}:
            assert svc["healthcheck"] == {"disable": True}, name


# -- environment: every variable named is one the agent reads -----------------------------------------
def test_every_variable_named_is_read_by_the_agent() -> None:
    known = set(ENV_VARS) | set(SECTION_ENV_VARS) | {ENV_CONFIG_FILE} | balena_read_vars()
    named = set(fleet_env()) | set(dockerfile_env(TEMPLATE)) | set(dockerfile_env(DOCKERFILE))
    for svc in services().values():
        named |= set(service_env(svc))
    unit_env = set(re.findall(r"^Environment=(\w+)=", UNIT.read_text(), flags=re.M))
    named |= unit_env
    ours = {n for n in named if n.startswith(("EDGE_", "BALENA_"))}
    assert ours - known == set(), "variables the agent does not read (it refuses unknown EDGE_*)"
    assert named - ours <= {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert "BALENA_DEVICE_UUID" in balena_read_vars()


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_each_service_environment_is_a_valid_agent_config(name: str, tmp_path: Path) -> None:
    # what a container sees: the image's ENV, the fleet's variables, then the service's own
    env = dockerfile_env(TEMPLATE) | fleet_env() | service_env(services()[name])
    env = {k: v for k, v in env.items() if k.startswith("EDGE_")}
    config = load_config(None, env)  # raises ConfigError listing every problem
    assert str(config.data_dir) == "/data/state"
    assert str(config.model_dir) == "/data/models"


def test_device_id_defaults_to_balena_device_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALENA_DEVICE_UUID", "0123456789abcdef0123456789abcdef")
    monkeypatch.delenv("EDGE_DEVICE_ID", raising=False)
    assert load_config(None, {}).device_id == "0123456789abcdef0123456789abcdef"


# -- balena.yml ------------------------------------------------------------------------------------
def test_balena_yml_follows_balena_documented_rules() -> None:
    doc = balena_yml()
    assert set(doc) <= BALENA_YML_KEYS, set(doc) - BALENA_YML_KEYS
    assert doc["type"] == "sw.application"  # the balena CLI accepts sw.application or sw.block
    assert isinstance(doc["name"], str) and doc["name"]
    assert isinstance(doc["description"], str) and len(doc["description"]) > 40
    assert SEMVER.match(str(doc["version"])), "the balena CLI refuses a version that is not semver"
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert doc["version"] == tomllib.load(f)["project"]["version"], "release version = package version"
    data = doc["data"]
    assert set(data) <= BALENA_YML_DATA_KEYS
    assert set(data["supportedDeviceTypes"]) <= PI_64BIT, "64-bit Raspberry Pi device types only"
    assert {"raspberrypi4-64", "raspberrypi5"} <= set(data["supportedDeviceTypes"])
    assert data["defaultDeviceType"] in data["supportedDeviceTypes"]
    for item in data["applicationEnvironmentVariables"]:
        assert isinstance(item, dict) and len(item) == 1, "a list of single NAME: value maps"
        ((key, value),) = item.items()
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), key
        assert isinstance(value, str | int | float | bool), key
    assert "applicationConfigVariables" not in data, "no host/supervisor configuration is needed"


# -- images ----------------------------------------------------------------------------------------
def test_dockerfile_template_uses_balena_arch_not_machine_name() -> None:
    text = TEMPLATE.read_text()
    assert "%%BALENA_ARCH%%" in text
    assert "%%BALENA_MACHINE_NAME%%" not in text and "%%RESIN_" not in text
    froms = [s.splitlines()[0] for s in stages(TEMPLATE)]
    assert all("%%BALENA_ARCH%%" in line for line in froms), froms
    # what balena builds for an aarch64 fleet: the arm64v8 Python image
    arch_args = dict(re.findall(r"^ARG (PYTHON_\w+)=(\S+)$", text, flags=re.M))
    assert arch_args["PYTHON_aarch64"].startswith("arm64v8/python:3.11-slim-bookworm")


@pytest.mark.parametrize("path", [TEMPLATE, DOCKERFILE], ids=["template", "plain"])
def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck(path: Path) -> None:
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage"
    runtime = all_stages[-1]
    users = instructions(runtime, "USER")
    assert users and users[-1] not in {"root", "0", "0:0"}, "the runtime runs as a non-root user"
    health = instructions(runtime, "HEALTHCHECK")
    assert len(health) == 1 and "edge-healthcheck" in health[0]
    assert instructions(runtime, "ENTRYPOINT") == ['["edge-entrypoint"]']
    for run in instructions(runtime, "RUN"):
        assert "apt-get install" not in run and "pip install" not in run, f"runtime stage installs: {run}"
        assert not COMPILERS.search(run), run
    bases = re.findall(r"^ARG PYTHON_\w+=(\S+)$", path.read_text(), flags=re.M)
    assert bases and all(b.endswith(":3.11-slim-bookworm") for b in bases), "slim Python 3.11 base"
    for run in instructions(all_stages[0], "RUN"):
        if "pip install" in run:
            assert "--only-binary=:all:" in run, f"nothing is compiled: {run}"
        assert "apt-get install" not in run, "no system build packages even in the build stage"
    copies = " ".join(instructions(runtime, "COPY"))
    assert "--from=build /opt/edge-agent" in copies
    assert "models/scripts" not in copies


def test_plain_dockerfile_is_the_template_with_a_multi_arch_base() -> None:
    def body(text: str, base: str) -> str:
        text = text[text.index("# ---- build") :]
        return text.replace(base, "BASE")

    assert body(DOCKERFILE.read_text(), "${PYTHON_IMAGE}") == body(
        TEMPLATE.read_text(), "${PYTHON_%%BALENA_ARCH%%}"
    )
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()


def test_dockerfile_copies_exist_and_scripts_are_executable() -> None:
    for stage in stages(TEMPLATE):
        for copy in instructions(stage, "COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = copy.split()
            for src in sources:
                assert (ROOT / src).exists(), src
    # the buildx ignore file lets every COPY source through (it excludes all, then re-includes)
    ignore = (FW / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for stage in stages(DOCKERFILE):
        for copy in instructions(stage, "COPY"):
            if not copy.startswith("--from"):
                for src in copy.split()[:-1]:
                    assert any(src.rstrip("/") == k or src.startswith(k + "/") for k in kept), src
    for script in (
        "entrypoint.sh",
        "healthcheck.py",
        "make-certs.sh",
        "provision-device.sh",
        "balena-push.sh",
    ):
        assert os.access(FW / script, os.X_OK), f"{script} is not executable"
    assert os.access(FW / "arm64" / "check.sh", os.X_OK)


def test_balena_push_stages_compose_and_metadata_at_the_root(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    subprocess.run([FW / "balena-push.sh", "--stage", stage], check=True, capture_output=True, timeout=60)
    assert (stage / "docker-compose.yml").read_text() == COMPOSE.read_text()
    assert (stage / "balena.yml").read_text() == BALENA_YML.read_text()
    build = services()["gateway"]["build"]
    assert (stage / build["context"] / build["dockerfile"]).is_file()
    for stage_text in stages(stage / build["dockerfile"]):
        for copy in instructions(stage_text, "COPY"):
            if not copy.startswith("--from"):
                for src in copy.split()[:-1]:
                    assert (stage / src).exists(), src
    assert not (stage / "models" / "scripts").exists()
    assert not list(stage.rglob("__pycache__")) and not list(stage.glob(".venv*"))
    assert sorted(p.name for p in (stage / "models").iterdir()) == sorted(
        p.name for p in (ROOT / "models").iterdir() if p.name != "scripts"
    )


# -- the image's scripts, run here ----------------------------------------------------------------
class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_script_answers_docker(health_server: int) -> None:
    def check(*args: str, **env: str) -> int:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")} | env
        return subprocess.run(
            [sys.executable, FW / "healthcheck.py", *args], env=full_env, capture_output=True, timeout=30
        ).returncode

    assert check(EDGE_PORT=str(health_server)) == 0
    assert check(str(health_server), EDGE_HOST="0.0.0.0") == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    assert check(EDGE_PORT=str(closed)) == 1


def _entrypoint_env(tmp_path: Path, bundled: Path, **extra: str) -> dict[str, str]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    fake = fake_bin / "edge-agent"
    fake.write_text('#!/bin/sh\necho "ran edge-agent $*"\n')
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    return base | {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "AGENT_BUNDLED_MODELS": str(bundled),
        "EDGE_MODEL_DIR": str(tmp_path / "data" / "models"),
        "EDGE_DATA_DIR": str(tmp_path / "data" / "state"),
        **extra,
    }


def test_entrypoint_seeds_bundled_models_without_overwriting(tmp_path: Path) -> None:
    bundled = tmp_path / "bundled"
    shutil.copytree(ROOT / "models", bundled, ignore=shutil.ignore_patterns("scripts"))
    env = _entrypoint_env(tmp_path, bundled)
    store = tmp_path / "data" / "models"
    (store / "iris" / "1").mkdir(parents=True)
    (store / "iris" / "1" / "manifest.json").write_text("{}")  # a version already there stays as it is
    out = subprocess.run(
        [FW / "entrypoint.sh", "edge-agent", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "ran edge-agent worker" in out.stdout
    names = sorted(p.name for p in bundled.iterdir())
    assert sorted(p.name for p in store.iterdir()) == names
    assert (store / "iris" / "1" / "manifest.json").read_text() == "{}"
    assert (store / "face" / "1" / "model.tflite").read_bytes() == (
        bundled / "face/1/model.tflite"
    ).read_bytes()
    assert not list(store.rglob(".seed-*"))
    assert (tmp_path / "data" / "state").is_dir()
    again = subprocess.run(
        [FW / "entrypoint.sh", "true"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "added bundled model" not in again.stderr + again.stdout


def test_entrypoint_idles_the_camera_without_a_source(tmp_path: Path) -> None:
    env = _entrypoint_env(tmp_path, tmp_path / "none")
    proc = subprocess.Popen(
        [FW / "entrypoint.sh", "edge-agent", "camera"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "the camera role without a source must idle, not exit"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, "the idle camera stops at once on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"EDGE_CAMERA__SOURCE" in proc.stderr.read()  # type: ignore[union-attr]
    with_source = _entrypoint_env(tmp_path, tmp_path / "none", EDGE_CAMERA__SOURCE="rtsp://cam/stream")
    out = subprocess.run(
        [FW / "entrypoint.sh", "edge-agent", "camera"],
        env=with_source,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "ran edge-agent camera"
    out = subprocess.run(
        [FW / "entrypoint.sh", "edge-agent", "camera", "--source", "0"],
        env=_entrypoint_env(tmp_path, tmp_path / "none"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "ran edge-agent camera --source 0"


# -- systemd unit ----------------------------------------------------------------------------------
def test_systemd_unit_runs_edge_agent_up(tmp_path: Path) -> None:
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key, []).append(value)
    assert set(sections) == {"Unit", "Service", "Install"}
    service = sections["Service"]
    exec_start = shlex.split(service["ExecStart"][0])
    assert Path(exec_start[0]).name == "edge-agent" and exec_start[1:] == ["up"]
    assert "up" in ROLES
    assert service["User"][0] not in {"root", "0"}
    assert service["KillMode"] == ["mixed"], "SIGTERM to the supervisor, which stops its roles itself"
    assert service["RestartPreventExitStatus"] == ["3"], "a configuration error is not retried forever"
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    analyze = shutil.which("systemd-analyze")
    if analyze:  # also let systemd parse it, with ExecStart pointing at this checkout's edge-agent
        edge_agent = Path(sys.executable).with_name("edge-agent")
        unit = tmp_path / "edge-agent.service"
        unit.write_text(UNIT.read_text().replace(exec_start[0], str(edge_agent)))
        out = subprocess.run(
            [analyze, "verify", "--man=no", unit], capture_output=True, text=True, timeout=60
        )
        # systemd reports an unknown key or a bad value as a warning naming the file, exit 0
        problems = [line for line in (out.stdout + out.stderr).splitlines() if str(unit) in line]
        assert out.returncode == 0 and problems == [], out.stdout + out.stderr
