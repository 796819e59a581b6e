"""``cloud-sync models publish FILE``: a user's bare model file becomes a signed package in one
command (the device's importer, the same checks), ready for a device to install and self-test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import cli
from cloud_sync.deploy import generate_keys
from cloud_sync.store import Store
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.package import Manifest
from edge_agent.runtime.store import ModelStore
from edge_agent.sync import signing
from edge_agent.sync.archive import unpack
from tests.conftest import DATA, ROOT
from tests.runtime.onnx_builders import dynamic_classifier


def cloud_sync(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    cmd = [sys.executable, "-m", "cloud_sync.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    made = generate_keys(tmp_path / "keys" / "signing.pem")
    return made.private, made.public


def test_publish_a_bare_onnx_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model, _, _ = dynamic_classifier(tmp_path / "user_model.onnx")
    db = tmp_path / "cloud" / "cloud.db"
    r = cloud_sync("models", "publish", model, "--name", "dyn", "--version", "3", "--postprocess",
                   "classification", "--key", keys[0], "--db", db)  # fmt: skip
    assert r.returncode == cli.EXIT_OK, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert (out["model"], out["version"]) == ("dyn", "3")
    assert out["manifest"]["inputs"][0]["shape"] == [None, 4]  # the manifest made is printed
    assert out["drift"].startswith("no drift reference written: no --sample given")  # and why no reference
    # the signature verifies with the public key, over the manifest the store recorded
    store = Store(db)
    row = store.model_version("dyn", "3")
    store.close()
    trusted = signing.load_trusted_keys(keys[1])
    signing.verify_manifest(row["manifest"], out["signature"], out["key_id"], trusted)
    # the artifact is a package a device installs and self-tests
    archive = db.parent / "artifacts" / f"{out['sha256']}.tar"
    pkg = tmp_path / "unpacked"
    unpack(archive, pkg, max_bytes=10_000_000)
    device = ModelStore(tmp_path / "device" / "models", tmp_path / "device" / "state.json")
    m: Manifest = device.install(pkg)
    loaded, report = device.load(m.name, m.version, BackendOptions())
    assert report.passed, report.message
    loaded.close()


def test_a_refused_file_publishes_nothing(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    photo = tmp_path / "model.onnx"
    photo.write_bytes((DATA / "cat.jpg").read_bytes())
    db = tmp_path / "cloud" / "cloud.db"
    r = cloud_sync("models", "publish", photo, "--task", "classification", "--key", keys[0], "--db", db)
    assert r.returncode == cli.EXIT_USAGE, (r.stdout, r.stderr)
    assert "model.onnx is a JPEG image, not a model" in r.stderr
    store = Store(db)
    assert store.models() == []
    store.close()
    artifacts = db.parent / "artifacts"
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_a_file_published_with_samples_carries_its_drift_reference(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """`models publish FILE --sample rows.npy`: the importer writes drift.json from the samples and it
    travels in the signed archive (devices watch drift against it)."""
    import tarfile

    import numpy as np

    model, _, _ = dynamic_classifier(tmp_path / "user_model.onnx")
    np.save(tmp_path / "rows.npy", np.random.default_rng(3).random((40, 4), dtype=np.float32))
    db = tmp_path / "cloud" / "cloud.db"
    r = cloud_sync("models", "publish", model, "--name", "dyn", "--version", "1", "--postprocess",
                   "classification", "--sample", tmp_path / "rows.npy", "--key", keys[0], "--db", db)  # fmt: skip
    assert r.returncode == cli.EXIT_OK, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["drift"] == "drift reference written from 40 sample row(s): f0, f1, f2, f3"
    with tarfile.open(db.parent / "artifacts" / f"{out['sha256']}.tar") as tar:
        assert "drift.json" in tar.getnames()
        ref = json.load(tar.extractfile("drift.json"))  # type: ignore[arg-type]
    assert ref["rows"] == 40 and set(ref["features"]) == {"f0", "f1", "f2", "f3"}
