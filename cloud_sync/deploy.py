"""Signed model updates, cloud side: signing keys, publish, deploy, rollout state.

- ``generate_keys``: a new Ed25519 key pair (private PEM mode 0600, public PEM
  for the devices' trusted-keys file).
- ``publish_file``: a bare ``.onnx``/``.tflite`` file made into a package by the
  device's importer (``edge_agent.runtime.importer``, the same checks as
  ``edge-agent models import``), then published as below.
- ``publish``: pack a verified model package into a tar archive named by its
  sha256 in the artifact directory, sign the manifest, record the version in
  the store. Versions are immutable: publishing the same version with other
  content is refused; publishing the same package again changes nothing.
- ``deploy``: a deployment of one model version to devices (or every known
  device): for each device, targets metadata naming it is signed
  (``cloud_sync.trust``) and published with the model as the device's
  retained ``edge/{device}/models/desired``. Every deployment carries the
  model's next release counter, so going back to an older version is a new
  signed decision (marked ``rollback`` when the operator says so), never a
  replay of the old one. Devices report on ``models/reported``; the
  ingest role stores those outcomes and ``Store.deployment_status`` shows them.
- ``rollback_device``: an operator's decision to take one device back to an
  older version (``POST /devices/{id}/rollback``, ``edge-console rollback``):
  a deployment to that device alone whose signed metadata says ``rollback``
  and carries the next release counter. Devices refuse a lower version
  without that flag, and refuse their MQTT ``rollback``/``activate`` commands
  once signed updates are configured, so this is the only way back.

Signing and verifying share ``edge_agent.sync.signing``; the archive format is
``edge_agent.sync.archive``. Private keys are never logged or printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from cloud_sync.artifacts import ARTIFACT_SUFFIX, artifact_path
from cloud_sync.errors import BrokerError, CloudSyncError, InvalidRequest, NotFound
from cloud_sync.mqtt import MqttLink
from cloud_sync.store import Store
from cloud_sync.trust import Signer, SigningKeyError, sign_targets
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.package import read_manifest
from edge_agent.runtime.store import version_key
from edge_agent.sync import protocol, signing
from edge_agent.sync.archive import pack

if TYPE_CHECKING:
    from edge_agent.runtime.import_options import ImportOptions

PUBLISH_WAIT_S = 5.0


class PackageRejected(InvalidRequest):
    code = "package_invalid"


class VersionConflict(CloudSyncError):
    status = 409
    code = "version_conflict"


# -- keys -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyFiles:
    private: Path
    public: Path
    key_id: str


def generate_keys(private: Path, public: Path | None = None) -> KeyFiles:
    """Write a new key pair; never overwrites a file."""
    public = public or private.with_name(private.name.removesuffix(".pem") + ".pub.pem")
    key = signing.generate_key()
    for path, data, mode in (
        (private, signing.private_pem(key), 0o600),
        (public, signing.public_pem(key.public_key()), 0o644),
    ):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise SigningKeyError(f"{path} exists; not overwritten") from None
        except OSError as exc:
            raise SigningKeyError(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return KeyFiles(private, public, signing.key_id(key.public_key()))


# -- publish ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Published:
    model: str
    version: str
    sha256: str
    size: int
    key_id: str
    artifact_url: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish(store: Store, package_dir: Path, key_path: Path, artifacts: Path) -> Published:
    """Pack, store and sign one package version; record it in the store."""
    try:
        key = signing.load_private_key(key_path)
        manifest = read_manifest(package_dir)
    except signing.SigningError as exc:
        raise SigningKeyError(exc.message) from None
    except EdgeAgentError as exc:
        raise PackageRejected(exc.message) from None
    artifacts.mkdir(parents=True, exist_ok=True)
    sha, size = _pack(package_dir, artifacts)
    doc = manifest.model_dump(mode="json")
    signature, kid = signing.sign_manifest(doc, key)
    try:
        existing: str | None = store.model_version(manifest.name, manifest.version)["sha256"]
    except NotFound:
        existing = None
    if existing is not None and existing != sha:
        artifact_path(artifacts, sha).unlink(missing_ok=True)
        raise VersionConflict(
            f"{manifest.name} {manifest.version} is already published with other content "
            f"(sha256 {existing[:16]}...); versions are immutable: publish a new version"
        )
    url = f"/artifacts/{sha}"
    store.add_model_version(
        manifest.name,
        manifest.version,
        doc,
        sha256=sha,
        created=time.time(),
        artifact_url=url,
        signature=signature,
        key_id=kid,
        description=manifest.description or None,
    )
    return Published(manifest.name, manifest.version, sha, size, kid, url, signature)


def publish_file(
    store: Store, model_path: Path, options: ImportOptions, key_path: Path, artifacts: Path
) -> tuple[Published, dict[str, Any], str]:
    """A user's bare model file -> a package (the device's importer, same checks) -> published.

    Returns what ``publish`` returns, the manifest made and the importer's drift note (the
    reference written from the samples, or why none was). Nothing is stored when the file
    is refused, the key is unreadable or the version already exists.
    """
    from edge_agent.runtime.importer import default_name, prepare, write_package

    try:
        signing.load_private_key(key_path)  # a bad key fails before any work
    except signing.SigningError as exc:
        raise SigningKeyError(exc.message) from None
    name = options.name or default_name(model_path)
    with contextlib.suppress(NotFound):
        store.model_version(name, options.version)
        raise VersionConflict(
            f"{name} {options.version} is already published; versions are immutable: pass another --version"
        )
    with tempfile.TemporaryDirectory(prefix="publish-import-") as tmp:
        try:
            prep = prepare(model_path, options)
            manifest = write_package(prep, Path(tmp))
        except EdgeAgentError as exc:
            raise PackageRejected(exc.message) from None
        published = publish(store, Path(tmp), key_path, artifacts)
        return published, manifest.model_dump(mode="json"), prep.drift_note


def _pack(package_dir: Path, artifacts: Path) -> tuple[str, int]:
    fd, tmp = tempfile.mkstemp(prefix=".publish.", suffix=ARTIFACT_SUFFIX, dir=artifacts)
    try:
        with os.fdopen(fd, "w+b") as fh:
            try:
                pack(package_dir, fh)
            except EdgeAgentError as exc:
                raise PackageRejected(exc.message) from None
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
            fh.seek(0)
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
        os.chmod(tmp, 0o644)
        os.replace(tmp, artifact_path(artifacts, sha))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sha, size


# -- deploy -----------------------------------------------------------------------------------
def deploy(
    store: Store,
    link: MqttLink,
    model: str,
    version: str,
    *,
    devices: list[str] | None = None,
    all_devices: bool = False,
    base_url: str,
    signer: Signer,
    note: str | None = None,
    rollback: bool = False,
    stage: bool = False,
) -> dict[str, Any]:
    """Create a deployment and set every target's retained desired state; returns its status."""
    row = store.model_version(model, version)
    if not row.get("signature") or not row.get("key_id"):
        raise InvalidRequest(f"{model} {version} is not signed: publish it with `cloud-sync models publish`")
    if all_devices == bool(devices):
        raise InvalidRequest("name the devices, or deploy to all of them; not both, not neither")
    targets = sorted({d["id"] for d in store.devices()} if all_devices else set(devices or []))
    if not targets:
        raise InvalidRequest("no devices to deploy to: the cloud has heard from none yet")
    bad = [d for d in targets if not protocol.DEVICE_RE.match(d)]
    if bad:
        raise InvalidRequest(f"invalid device ids: {bad[:5]}")
    if not link.connected:
        raise BrokerError("not connected to the broker; try again shortly")
    signed, entry = model_entry(store, signer, row, base_url, rollback=rollback, stage=stage)
    deployment_id = uuid.uuid4().hex
    now = time.time()
    messages = {d: desired_for(store, signer, d, deployment_id, [(signed, entry)]) for d in targets}
    store.create_deployment(deployment_id, [{"model": model, "version": version}], targets, now, note)
    failed: list[str] = []
    for device in targets:
        msg = messages[device]
        try:
            payload = protocol.encode(msg)
            link.publish(
                protocol.topic(device, "models_desired"), payload, qos=1, retain=True, wait_s=PUBLISH_WAIT_S
            )
        except (BrokerError, protocol.ProtocolError) as exc:
            failed.append(f"{device}: {exc.message}")
    if failed:
        raise BrokerError(
            f"deployment {deployment_id} created, but its desired state was not published to "
            f"{len(failed)} devices (deploy again): {'; '.join(failed[:5])}",
            deployment=deployment_id,
        )
    return store.deployment_status(deployment_id)


def rollback_device(
    store: Store,
    link: MqttLink,
    device: str,
    model: str,
    version: str | None,
    *,
    base_url: str,
    signer: Signer,
    note: str | None = None,
) -> dict[str, Any]:
    """Sign and publish ``device``'s going back to an older ``version`` of ``model`` (default: the newest
    earlier version it reported active); the deployment's status with ``rollback: {from, to}``."""
    row = store.device(device)  # NotFound: a device the cloud never heard from
    current = (row.get("reported_models") or row.get("models") or {}).get(model)
    if current is None:
        raise InvalidRequest(f"device {device!r} reports no model {model!r}; nothing to roll back")
    if version is None:
        earlier = [v for v in store.active_versions(device, model) if version_key(v) < version_key(current)]
        if not earlier:
            raise InvalidRequest(
                f"no version of {model!r} older than {current} is known to have been active on {device!r}; "
                "name the version to go back to"
            )
        version = earlier[0]
    elif version_key(version) >= version_key(current):
        raise InvalidRequest(
            f"{model} {version} is not older than {current}, which {device!r} runs: a rollback goes back; "
            "deploy a newer version with POST /deployments"
        )
    status = deploy(
        store,
        link,
        model,
        version,
        devices=[device],
        base_url=base_url,
        signer=signer,
        note=note or f"rollback of {model} on {device} from {current} to {version}",
        rollback=True,
    )
    return status | {"rollback": {"device": device, "model": model, "from": current, "to": version}}


def signed_model(row: dict[str, Any], base_url: str) -> protocol.SignedModel:
    """A published version's store row as the desired-state message carries it."""
    return protocol.SignedModel(
        manifest=row["manifest"],
        signature=row["signature"],
        key_id=row["key_id"],
        artifact_url=urljoin(base_url, row["artifact_url"]),
        artifact_sha256=row["sha256"],
    )


def model_entry(
    store: Store,
    signer: Signer,
    row: dict[str, Any],
    base_url: str,
    *,
    rollback: bool = False,
    stage: bool = False,
) -> tuple[protocol.SignedModel, dict[str, Any]]:
    """The model as the message carries it, and what the targets metadata signs about it (with the
    next release counter of the model: it never goes down on a device)."""
    try:
        size = artifact_path(signer.artifacts, row["sha256"]).stat().st_size
    except OSError:
        raise InvalidRequest(
            f"the archive of {row['model']} {row['version']} is missing from {signer.artifacts}"
        ) from None
    signed = signed_model(row, base_url)
    entry = {
        "name": row["model"],
        "version": row["version"],
        "release": store.next_counter(f"release:{row['model']}"),
        "rollback": rollback,
        "stage": stage,
        "manifest": row["manifest"],
        "artifact_url": signed.artifact_url,
        "artifact_sha256": row["sha256"],
        "artifact_size": size,
    }
    return signed, entry


def desired_for(
    store: Store,
    signer: Signer,
    device: str,
    deployment: str,
    models: list[tuple[protocol.SignedModel, dict[str, Any]]],
) -> protocol.ModelsDesired:
    """One device's desired state with its own signed targets metadata and the root chain."""
    roots, targets = sign_targets(
        store,
        signer.directory,
        signer.keys,
        device=device,
        deployment=deployment,
        models=[entry for _, entry in models],
        expiry_s=signer.expiry_s,
    )
    return protocol.ModelsDesired(
        device=device,
        deployment=deployment,
        models=[signed for signed, _ in models],
        ts=time.time(),
        targets=targets,
        roots=roots,
    )
