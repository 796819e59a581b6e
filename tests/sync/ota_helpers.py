"""Real things for the signed-update tests: model package versions made from models/iris/1,
a device model store, the cloud API as a uvicorn subprocess, signed desired states."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cloud_sync import deploy
from cloud_sync.deploy import desired_for, model_entry
from cloud_sync.store import Store
from cloud_sync.trust import Signer, load_keys
from edge_agent.runtime.package import read_manifest, save_golden, write_manifest
from edge_agent.runtime.store import ModelStore
from edge_agent.sync import protocol
from tests.cloud import Role, free_port, running, wait_for
from tests.conftest import MODELS, ROOT, CloudDb, PgUrl

ROW = [[5.1, 3.5, 1.4, 0.2]]


def make_version(root: Path, version: str, *, break_golden: bool = False, label: str | None = None) -> Path:
    """iris/<version>: a copy of iris/1 with its manifest's version changed (and, with
    ``break_golden``, a golden sample the model cannot reproduce, re-hashed in the manifest)."""
    pkg = root / "iris" / version
    shutil.copytree(MODELS / "iris" / "1", pkg, ignore=shutil.ignore_patterns("samples"))
    m = read_manifest(pkg)
    m = m.model_copy(update={"version": version, "description": label or m.description})
    if break_golden:
        with np.load(pkg / "golden.npz") as g:
            arrays = {k: g[k] for k in g.files}
        inputs = {k.removeprefix("input."): v for k, v in arrays.items() if k.startswith("input.")}
        outputs = {"output_probability": arrays["output.output_probability"] + 0.5}
        digest = save_golden(pkg, inputs, outputs)
        m = m.model_copy(update={"golden": m.golden.model_copy(update={"sha256": digest})})
    write_manifest(pkg, m)
    return pkg


def device_store(root: Path) -> ModelStore:
    """A fresh device: iris version 1 only, no active pointer written yet."""
    shutil.copytree(MODELS / "iris" / "1", root / "models" / "iris" / "1")
    return ModelStore(root / "models", root / "state" / "store-state.json")


def flip_member_byte(archive: Path, member: str) -> None:
    """Flip the last data byte of one member of a tar archive, in place."""
    with tarfile.open(archive, "r:") as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size - 1
    with archive.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def signed_model(row: dict[str, Any], base_url: str, **changes: Any) -> protocol.SignedModel:
    return deploy.signed_model(row, base_url).model_copy(update=changes)


def desired(
    device: str, *models: protocol.SignedModel, deployment: str | None = None
) -> protocol.ModelsDesired:
    """A desired state as the device receives it: through the wire encoding and back."""
    msg = protocol.ModelsDesired(
        device=device, deployment=deployment or uuid.uuid4().hex, models=list(models), ts=time.time()
    )
    _, decoded = protocol.decode(protocol.topic(device, "models_desired"), protocol.encode(msg))
    assert isinstance(decoded, protocol.ModelsDesired)
    return decoded


def api_env(db: CloudDb, broker_port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")}
    env |= {
        "CLOUD_BROKER_HOST": "127.0.0.1",
        "CLOUD_BROKER_PORT": str(broker_port),
        "PYTHONPATH": str(ROOT),
    }
    if isinstance(db, PgUrl):  # PostgreSQL; artifacts still go beside db_path
        env |= {"CLOUD_DB_URL": str(db), "CLOUD_DB_PATH": str(db.state_dir / "cloud.sqlite3")}
    else:
        env["CLOUD_DB_PATH"] = str(db)
    return env | {f"CLOUD_{k.upper()}": v for k, v in settings.items()}


@contextmanager
def cloud_api(db: CloudDb, workdir: Path, broker_port: int | None = None, **settings: str) -> Iterator[str]:
    """``cloud-sync api`` as a subprocess on a free loopback port; yields its base URL."""
    port = free_port()
    env = api_env(db, broker_port or free_port(), **settings)
    with running(Role(["api", "--port", str(port)], env, workdir / f"api-{port}.log")) as role:
        role.wait_log("Uvicorn running on")
        base = f"http://127.0.0.1:{port}/"
        wait_for(lambda: httpx.get(base + "health", timeout=2).status_code == 200, what="API health")
        yield base


def signer(db: Path, *keys: Path, expiry_s: int = 3600) -> Signer:
    """The cloud's signer for a database: its keys, ``trust/`` and ``artifacts/`` beside it."""
    return Signer(load_keys(list(keys)), db.parent / "trust", db.parent / "artifacts", expiry_s)


def signed_desired(
    db: Path,
    sign: Signer,
    device: str,
    row: dict[str, Any],
    base_url: str,
    *,
    deployment: str | None = None,
    rollback: bool = False,
    **changes: Any,
) -> protocol.ModelsDesired:
    """What ``cloud_sync.deploy`` publishes for ``device`` (signed by the real cloud code), with
    ``changes`` made afterwards to the unsigned part of the message (an attacker's edits), through
    the wire encoding and back."""
    store = Store(db)
    try:
        signed, entry = model_entry(store, sign, row, base_url, rollback=rollback)
        msg = desired_for(store, sign, device, deployment or uuid.uuid4().hex, [(signed, entry)])
    finally:
        store.close()
    msg = msg.model_copy(update={"models": [signed.model_copy(update=changes)]})
    _, decoded = protocol.decode(protocol.topic(device, "models_desired"), protocol.encode(msg))
    assert isinstance(decoded, protocol.ModelsDesired)
    return decoded
