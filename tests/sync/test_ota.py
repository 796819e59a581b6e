"""Signed model updates on the device, for real: packages made from models/iris/1, published and
signed by the cloud tooling (the CLI as a subprocess), served by the cloud API (uvicorn
subprocess) with HTTP Range, downloaded, verified, installed and self-tested by
``edge_agent.sync.ota`` into a real model store, served by a real Engine."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

import edge_agent
from cloud_sync.artifacts import artifact_path
from cloud_sync.deploy import generate_keys, publish
from cloud_sync.store import Store
from edge_agent.clock import BUILD_EPOCH
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import MANIFEST_NAME
from edge_agent.runtime.store import ModelStore
from edge_agent.sync import metadata, signing
from edge_agent.sync.archive import ArchiveError, pack, unpack
from edge_agent.sync.ota import OtaSettings, OtaUpdater
from edge_agent.sync.ota_runner import OtaRunner, StoreActivator
from edge_agent.sync.protocol import ModelsDesired, UpdateOutcome
from tests.conftest import MODELS, ROOT
from tests.sync.ota_helpers import (
    ROW,
    cloud_api,
    device_store,
    flip_member_byte,
    make_version,
    signed_desired,
    signer,
)

DEVICE = "dev-ota"


@dataclass
class Cloud:
    base: str
    db: Path
    artifacts: Path
    rows: dict[str, dict[str, Any]]
    trusted: Path  # the devices' trusted public key file
    other_key: Path  # a private key the devices do not trust
    key: Path  # the signing key

    def desired(self, row: dict[str, Any], base_url: str, **options: Any) -> ModelsDesired:
        """The desired state the cloud signs for DEVICE; ``options``: deployment, rollback, or edits
        to the unsigned part of the message."""
        return signed_desired(self.db, signer(self.db, self.key), DEVICE, row, base_url, **options)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    work = tmp_path_factory.mktemp("ota-cloud")
    keys = generate_keys(work / "keys" / "signing.pem")
    other = generate_keys(work / "keys" / "other.pem")
    db, artifacts = work / "cloud.sqlite3", work / "artifacts"
    packages = work / "packages"
    # version 2 published through the real command line
    make_version(packages, "2")
    cli = [sys.executable, "-m", "cloud_sync.cli", "models", "publish", str(packages / "iris" / "2")]
    cli += ["--key", str(keys.private), "--db", str(db)]  # archives go to artifacts/ beside the db
    done = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["key_id"] == keys.key_id
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    store = Store(db)
    make_version(packages, "3", break_golden=True)  # signed, but fails its golden self-test
    make_version(packages, "4", label="to be tampered with")
    make_version(packages, "5", label="to be tampered with, sha256 adjusted")
    for version in ("3", "4", "5"):
        publish(store, packages / "iris" / version, keys.private, artifacts)
    publish(store, MODELS / "iris" / "1", keys.private, artifacts)  # the bundled version, to go back to
    rows = {v: store.model_version("iris", v) for v in ("1", "2", "3", "4", "5")}
    store.close()
    with cloud_api(db, work) as base:
        yield Cloud(base, db, artifacts, rows, keys.public, other.private, keys.private)


@dataclass
class Device:
    store: ModelStore
    engine: Engine
    updater: OtaUpdater
    outcomes: list[UpdateOutcome]
    downloads: Path

    def apply(self, msg: ModelsDesired) -> UpdateOutcome:
        (final,) = self.updater.apply(msg)
        return final

    def serving(self) -> str:
        return self.engine.predict("iris", {"float_input": ROW}).version

    def states(self) -> list[str]:
        return [o.state for o in self.outcomes]


def make_device(root: Path, cloud: Cloud, **options: Any) -> Device:
    store = device_store(root)
    engine = Engine(store)
    outcomes: list[UpdateOutcome] = []
    settings = OtaSettings.in_data_dir(
        root / "data", cloud.trusted, retry_delay_s=0.05, device=DEVICE, **options
    )
    updater = OtaUpdater(store, engine, settings, outcomes.append)
    return Device(store, engine, updater, outcomes, settings.download_dir)


@pytest.fixture
def device(tmp_path: Path, cloud: Cloud) -> Iterator[Device]:
    dev = make_device(tmp_path, cloud)
    assert dev.serving() == "1"
    yield dev
    dev.updater.close()
    dev.engine.close()


def assert_refused(dev: Device, final: UpdateOutcome, code: str, fragment: str) -> None:
    assert final.state == "failed", final
    assert final.reason is not None and final.reason.startswith(code), final.reason
    assert fragment in final.reason, final.reason
    assert dev.store.active_version("iris") == "1"
    assert dev.serving() == "1"
    assert Engine(dev.store).predict("iris", {"float_input": ROW}).version == "1"  # a fresh process too
    assert dev.store.versions("iris") == ["1"]


# -- the happy path, idempotence, rollback ---------------------------------------------------------
def test_update_downloads_verifies_installs_and_activates(device: Device, cloud: Cloud) -> None:
    msg = cloud.desired(cloud.rows["2"], cloud.base)
    t0 = time.perf_counter()
    final = device.apply(msg)
    elapsed = time.perf_counter() - t0
    assert (final.state, final.version, final.progress) == ("active", "2", 1.0), final
    assert final.reason == "golden sample reproduced"
    states = device.states()
    assert states[0] == "downloading" and device.outcomes[0].progress == 0.0
    assert device.outcomes[states.index("verifying") - 1].progress == 1.0
    assert states[-2:] == ["verifying", "active"]
    assert {o.deployment for o in device.outcomes} == {msg.deployment}
    assert device.store.versions("iris") == ["1", "2"]  # installed beside the old version
    assert device.serving() == "2"
    assert list(device.downloads.iterdir()) == []  # nothing left behind
    print(
        f"\nupdate of iris 1 -> 2 (download, verify, install, self-test, activate): {elapsed * 1000:.0f} ms"
    )

    # the same desired state delivered again: nothing redone, the outcome re-reported
    device.outcomes.clear()
    again = device.apply(msg)
    assert (again.state, again.version) == ("active", "2")
    assert device.states() == ["active"]

    # going back is a new signed decision (iris 1 marked rollback, a higher release): no download
    device.outcomes.clear()
    back = device.apply(cloud.desired(cloud.rows["1"], cloud.base, rollback=True))
    assert (back.state, back.version) == ("active", "1"), back
    assert device.serving() == "1" and device.store.active_version("iris") == "1"
    assert "downloading" not in device.states()
    # the earlier desired state of 2, delivered again, is a replay now: refused, nothing undone
    again = device.apply(msg)
    assert again.state == "failed" and (again.reason or "").startswith("rollback_refused: "), again
    assert device.serving() == "1"

    # a new deployment of the same version activates it again, without downloading
    device.outcomes.clear()
    redo = device.apply(cloud.desired(cloud.rows["2"], cloud.base))
    assert redo.state == "active" and device.serving() == "2"
    assert "downloading" not in device.states()

    # an older version signed by the cloud but not marked rollback: refused, 2 keeps serving
    down = device.apply(cloud.desired(cloud.rows["1"], cloud.base))
    assert down.state == "failed" and "does not mark it a rollback" in (down.reason or ""), down
    assert device.serving() == "2"


def test_sync_role_activation_switches_the_store_pointer(tmp_path: Path, cloud: Cloud) -> None:
    store = device_store(tmp_path)
    outcomes: list[UpdateOutcome] = []
    settings = OtaSettings.in_data_dir(tmp_path / "data", cloud.trusted, device=DEVICE)
    runner = OtaRunner(OtaUpdater(store, StoreActivator(store), settings, outcomes.append))
    try:
        runner.submit(cloud.desired(cloud.rows["2"], cloud.base))
        assert runner.wait_idle(30)
        assert outcomes[-1].state == "active"
        assert store.active_version("iris") == "2"
        gateway = Engine(ModelStore(store.root, store.state_path))  # another process follows the pointer
        assert gateway.predict("iris", {"float_input": ROW}).version == "2"
    finally:
        runner.stop()


SYNC_ROLE = """
import json, sys
from pathlib import Path
from edge_agent.runtime.store import ModelStore
from edge_agent.sync.ota import OtaSettings, OtaUpdater
from edge_agent.sync.ota_runner import StoreActivator
from edge_agent.sync.protocol import ModelsDesired
root = Path(sys.argv[1])
store = ModelStore(root / "models", root / "state" / "store-state.json")
settings = OtaSettings.in_data_dir(root / "data", Path(sys.argv[2]), device="dev-ota")
updater = OtaUpdater(store, StoreActivator(store), settings, lambda o: None)
finals = [updater.apply(ModelsDesired.model_validate_json(arg))[0] for arg in sys.argv[3:]]
runtimes = sorted(m for m in ("onnxruntime", "ai_edge_litert", "cv2") if m in sys.modules)
print(json.dumps({"finals": [f.model_dump() for f in finals], "runtimes": runtimes}))
"""


def test_sync_role_self_tests_in_a_child_process(tmp_path: Path, cloud: Cloud) -> None:
    device_store(tmp_path)
    msgs = [cloud.desired(cloud.rows[v], cloud.base).model_dump_json() for v in ("3", "2")]
    done = subprocess.run(
        [sys.executable, "-c", SYNC_ROLE, str(tmp_path), str(cloud.trusted), *msgs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    failed, active = out["finals"]
    assert failed["state"] == "failed" and failed["reason"].startswith("self_test_failed: iris/3"), failed
    assert (active["state"], active["version"]) == ("active", "2")
    assert out["runtimes"] == []  # the runtime ran in the child only
    assert (
        ModelStore(tmp_path / "models", tmp_path / "state" / "store-state.json").active_version("iris") == "2"
    )


# -- resume --------------------------------------------------------------------------------------
class Flaky(BaseHTTPRequestHandler):
    """Serves one artifact; the first request gets the full Content-Length but only ``cut`` bytes."""

    data = b""
    cut = 0
    ranges: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if len(type(self).ranges) == 1:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.data)))
            self.end_headers()
            self.wfile.write(self.data[: self.cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the link drops mid-transfer
            return
        start = int(rng.removeprefix("bytes=").removesuffix("-")) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.send_header("Content-Length", str(len(self.data) - start))
        self.end_headers()
        self.wfile.write(self.data[start:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_interrupted_download_resumes_with_a_range_request(device: Device, cloud: Cloud) -> None:
    row = cloud.rows["2"]
    data = artifact_path(cloud.artifacts, row["sha256"]).read_bytes()
    Flaky.data, Flaky.cut, Flaky.ranges = data, len(data) // 3, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        final = device.apply(cloud.desired(row, base))
    finally:
        server.shutdown()
        server.server_close()
    assert final.state == "active", final
    assert Flaky.ranges == [None, f"bytes={len(data) // 3}-"]
    assert device.serving() == "2"


def test_partial_file_from_before_a_restart_is_completed_from_the_api(
    device: Device, cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    row = cloud.rows["2"]
    data = artifact_path(cloud.artifacts, row["sha256"]).read_bytes()
    half = len(data) // 2
    device.downloads.mkdir(parents=True)
    (device.downloads / f"{row['sha256']}.part").write_bytes(data[:half])
    with caplog.at_level(logging.INFO, logger="edge_agent.sync"):
        final = device.apply(cloud.desired(row, cloud.base))
    assert final.state == "active", final
    assert f"at byte {half} of {len(data)}" in caplog.text
    assert f"({half} resumed from disk)" in caplog.text


def test_api_serves_artifacts_with_http_range(cloud: Cloud) -> None:
    sha = cloud.rows["2"]["sha256"]
    data = artifact_path(cloud.artifacts, sha).read_bytes()
    url = f"{cloud.base}artifacts/{sha}"
    whole = httpx.get(url)
    assert (whole.status_code, whole.content, whole.headers["accept-ranges"]) == (200, data, "bytes")
    assert whole.headers["etag"] == f'"{sha}"'
    part = httpx.get(url, headers={"Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert part.content == data[100:]
    beyond = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert (beyond.status_code, beyond.headers["content-range"]) == (416, f"bytes */{len(data)}")
    stale = httpx.get(url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data  # a changed artifact is sent whole
    assert httpx.get(f"{cloud.base}artifacts/{'0' * 64}").status_code == 404
    assert httpx.get(f"{cloud.base}artifacts/..%2Fcloud.sqlite3").status_code in (404, 422)


# -- refusals: each leaves version 1 serving and says why -----------------------------------------
def resigned(msg: ModelsDesired, *keys: Path, keyid: str | None = None) -> ModelsDesired:
    """``msg`` with its targets metadata signed again by ``keys`` (under ``keyid`` if given)."""
    assert msg.targets is not None
    env = metadata.sign(msg.targets.signed, [signing.load_private_key(k) for k in keys])
    if keyid is not None:
        env = env.model_copy(
            update={"signatures": [s.model_copy(update={"keyid": keyid}) for s in env.signatures]}
        )
    return msg.model_copy(update={"targets": env})


def test_metadata_signed_by_an_untrusted_key_is_refused_before_download(device: Device, cloud: Cloud) -> None:
    msg = resigned(cloud.desired(cloud.rows["2"], cloud.base), cloud.other_key)
    final = device.apply(msg)
    assert_refused(device, final, "untrusted_key", "does not trust")
    assert device.states() == ["failed"] and not device.downloads.exists()


def test_signature_of_another_key_under_the_trusted_key_id_is_refused(device: Device, cloud: Cloud) -> None:
    trusted_id = next(iter(signing.load_trusted_keys(cloud.trusted)))
    msg = resigned(cloud.desired(cloud.rows["2"], cloud.base), cloud.other_key, keyid=trusted_id)
    final = device.apply(msg)
    assert_refused(device, final, "threshold_not_met", "0 valid signature(s)")
    assert not device.downloads.exists()


def test_metadata_without_signed_targets_is_refused(device: Device, cloud: Cloud) -> None:
    legacy = cloud.desired(cloud.rows["2"], cloud.base).model_copy(update={"targets": None, "roots": []})
    final = device.apply(legacy)
    assert_refused(device, final, "metadata_missing", "no signed targets metadata")


def test_edited_manifest_does_not_match_the_signed_metadata(device: Device, cloud: Cloud) -> None:
    row = cloud.rows["2"]
    forged = dict(row["manifest"]) | {"labels": ["setosa", "virginica", "versicolor"]}
    final = device.apply(cloud.desired(row, cloud.base, manifest=forged))
    assert_refused(device, final, "artifact_mismatch", "no manifest in the message matches")


def test_wrong_artifact_sha256_is_refused(device: Device, cloud: Cloud) -> None:
    row = cloud.rows["2"]
    final = device.apply(cloud.desired(row, cloud.base, artifact_sha256="ab" * 32))
    assert_refused(device, final, "artifact_mismatch", "artifact sha256 differs from the signed one")
    assert not device.downloads.exists()


def test_tampered_artifact_is_refused(device: Device, cloud: Cloud) -> None:
    row = cloud.rows["4"]
    flip_member_byte(artifact_path(cloud.artifacts, row["sha256"]), "model.onnx")
    final = device.apply(cloud.desired(row, cloud.base))
    assert_refused(device, final, "update_refused", "corrupt or was tampered with")


def test_archive_and_sha256_swapped_in_the_message_are_refused(device: Device, cloud: Cloud) -> None:
    # whoever can change both the archive and the artifact_sha256 in the message cannot change what
    # the metadata signed: URL and sha256 are compared before anything is downloaded
    row = cloud.rows["5"]
    path = artifact_path(cloud.artifacts, row["sha256"])
    flip_member_byte(path, "model.onnx")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    shutil.copy(path, artifact_path(cloud.artifacts, sha))
    url = f"{cloud.base}artifacts/{sha}"
    final = device.apply(cloud.desired(row, cloud.base, artifact_sha256=sha, artifact_url=url))
    assert_refused(device, final, "artifact_mismatch", "is not the signed")
    assert not device.downloads.exists()


def test_model_failing_its_self_test_is_not_activated(device: Device, cloud: Cloud) -> None:
    # a fresh device has no active pointer yet: the newest version on disk would win without one
    final = device.apply(cloud.desired(cloud.rows["3"], cloud.base))
    assert_refused(device, final, "self_test_failed", "iris/3 failed its golden self-test")
    assert device.states()[-2:] == ["verifying", "failed"]


def test_download_failure_is_reported_and_retried_on_the_next_delivery(tmp_path: Path, cloud: Cloud) -> None:
    dev = make_device(tmp_path, cloud, attempts=2)
    row = cloud.rows["2"]
    msg = cloud.desired(row, "http://127.0.0.1:9/")  # nothing listens there
    final = dev.apply(msg)
    assert final.state == "failed" and str(final.reason).startswith("download_failed"), final
    assert dev.serving() == "1"
    fixed = cloud.desired(row, cloud.base, deployment=msg.deployment)
    assert dev.apply(fixed).state == "active"


# -- the archive format -------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(_info("/etc/passwd"), b"x")], "not a plain file name"),
        ([(_info("../escape"), b"x")], "not a plain file name"),
        ([(_info("sub/manifest.json"), b"x")], "not a plain file name"),
        ([(_info("link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "not a regular file"),
        ([(_info("hard", tarfile.LNKTYPE, "manifest.json"), b"")], "not a regular file"),
        ([(_info("dir", tarfile.DIRTYPE), b"")], "not a regular file"),
        ([(_info("big"), b"x" * 2048)], "more than 1024 bytes"),
        ([(_info(f"f{i}"), b"x") for i in range(20)], "more than 16 files"),
        ([(_info("a"), b"x"), (_info("a"), b"y")], "appears twice"),
        ([(_info("model.onnx"), b"x")], f"holds no {MANIFEST_NAME}"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, members: list[Any], reason: str) -> None:
    archive = _tar(tmp_path / "a.tar", members)
    with pytest.raises(ArchiveError, match=reason):
        unpack(archive, tmp_path / "out", max_bytes=1024)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "escape").exists()


def test_packing_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    one, two = io.BytesIO(), io.BytesIO()
    names = ["drift.json", "golden.npz", "manifest.json", "model.onnx"]  # no samples/; the drift reference
    assert pack(MODELS / "iris" / "1", one) == names
    pack(MODELS / "iris" / "1", two)
    assert one.getvalue() == two.getvalue()
    (tmp_path / "a.tar").write_bytes(one.getvalue())
    unpack(tmp_path / "a.tar", tmp_path / "out", max_bytes=10**6)
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (
        MODELS / "iris" / "1" / "model.onnx"
    ).read_bytes()


def test_canonical_json_is_the_signed_form() -> None:
    assert signing.canonical_json({"b": 1, "a": [1.5, "é", None]}) == b'{"a":[1.5,"\\u00e9",null],"b":1}'
    with pytest.raises(signing.SignatureError):
        signing.canonical_json({"x": float("nan")})
    key = signing.generate_key()
    manifest = json.loads((MODELS / "iris" / "1" / MANIFEST_NAME).read_text())
    signature, kid = signing.sign_manifest(manifest, key)
    trusted = signing.parse_public_keys(signing.public_pem(key.public_key()) * 1)
    signing.verify_manifest(json.loads(json.dumps(manifest, indent=4)), signature, kid, trusted)
    with pytest.raises(signing.SignatureError):
        signing.verify_manifest(manifest | {"version": "9"}, signature, kid, trusted)
    with pytest.raises(signing.SignatureError, match="base64"):
        signing.verify_manifest(manifest, "not base64!", kid, trusted)


# -- the clock rule: a clock that cannot be trusted skips the update, expiry stays on --------------
def test_a_clock_earlier_than_the_last_trusted_time_skips_the_update(device: Device, cloud: Cloud) -> None:
    trust = device.updater.trust
    msg = cloud.desired(cloud.rows["2"], cloud.base)
    trust.dir.mkdir(parents=True, exist_ok=True)
    floor = time.time() + 86_400  # a signed issue time seen before says it is tomorrow at least
    (trust.dir / "state.json").write_text(json.dumps({"time_floor": floor}))
    final = device.apply(msg)
    assert_refused(device, final, "clock_untrusted", "is earlier than the last trusted time")
    assert json.loads(device.updater.settings.state_path.read_text())["iris"]["retry"] is True
    (trust.dir / "state.json").write_text(json.dumps({"time_floor": 0}))  # the clock is set (NTP)
    assert device.apply(msg).state == "active"  # the same desired state, retried


def test_an_unsynced_clock_before_the_build_skips_the_update_and_never_sees_it_unexpired(
    device: Device, cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one rule for an unsynced clock (docs/model-updates.md, "The clock"; edge_agent/clock.py):
    a Pi that booted in 2001 (clock_trust says unsynced) is below the time floor seeded from the
    agent's build, so the update is skipped as clock_untrusted, whatever the expiry says; the same
    document is accepted once the clock reads the real time."""
    msg = cloud.desired(cloud.rows["2"], cloud.base)
    assert msg.targets is not None
    trust = device.updater.trust
    root = trust.root()
    expired_now = float(msg.targets.signed["expires"])  # in 2001 this looks years fresh
    for before_ntp in (0.0, 978_307_200.0, expired_now - 10 * 365 * 86_400):
        with pytest.raises(metadata.ClockUntrusted, match="earlier than the last trusted time"):
            trust.check_targets(root, msg.targets, DEVICE, now=before_ntp)
    # installed on a first boot before NTP: the package's files carry 1970 mtimes; the floor is
    # still the agent's release date (clock.BUILD_EPOCH), never 1970
    package = tmp_path / "installed-in-1970" / "__init__.py"
    package.parent.mkdir()
    package.write_text("")
    os.utime(package, (86_400.0, 86_400.0))
    monkeypatch.setattr(edge_agent, "__file__", str(package))
    assert trust.build_time_seed() == BUILD_EPOCH
    state_file = trust.dir / "state.json"
    kept = state_file.read_text() if state_file.exists() else None
    if kept is not None:  # as if nothing had been verified yet: the floor is the build's alone
        state_file.write_text(json.dumps(json.loads(kept) | {"time_floor": 0}))
    try:
        for before_ntp in (86_400.0 + 60, 978_307_200.0):
            with pytest.raises(metadata.ClockUntrusted, match="earlier than the last trusted time"):
                trust.check_targets(root, msg.targets, DEVICE, now=before_ntp)
    finally:
        if kept is not None:
            state_file.write_text(kept)
    assert trust.check_targets(root, msg.targets, DEVICE).targets.version >= 1  # NTP answered


def test_metadata_issued_after_the_device_clock_proves_the_clock_behind(device: Device, cloud: Cloud) -> None:
    msg = cloud.desired(cloud.rows["2"], cloud.base)
    assert msg.targets is not None
    later = msg.targets.signed | {"issued": time.time() + 86_400, "expires": time.time() + 2 * 86_400}
    env = metadata.sign(later, [signing.load_private_key(cloud.key)])
    final = device.apply(msg.model_copy(update={"targets": env}))
    assert_refused(device, final, "clock_untrusted", "the clock is behind")
    state = json.loads((device.updater.trust.dir / "state.json").read_text())
    assert state["time_floor"] >= later["issued"]  # remembered: a clock reset to 1970 is refused too
    assert device.updater.trust.build_time_seed() > 1.6e9  # seeded from the agent's build


def test_an_expired_root_is_not_trusted_for_updates(device: Device, cloud: Cloud) -> None:
    msg = cloud.desired(cloud.rows["2"], cloud.base)  # carries the cloud's root chain (version 1)
    assert msg.roots and msg.targets is not None
    key = signing.load_private_key(cloud.key)
    current = metadata.parse_root(msg.roots[-1])
    stale = current.model_copy(update={"version": current.version + 1, "expires": time.time() - 60})
    env = metadata.sign(metadata.document(stale), [key])  # validly signed, but already expired
    final = device.apply(msg.model_copy(update={"roots": [*msg.roots, env]}))
    assert_refused(device, final, "metadata_expired", f"root metadata version {stale.version} expired")
