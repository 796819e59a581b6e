"""Signed update metadata, cloud side: the root of trust and per-device targets.

- Root versions live as ``trust/<N>.root.json`` beside the database. Version 1
  is made the first time metadata is signed, by the signing key(s) that
  devices already trust as PEM (so devices in the field move to the new
  scheme on their next desired state, with no manual step).
- ``rotate``: root N+1 naming new keys and a threshold, signed by the old
  root's keys and the new ones (``cloud-sync keys rotate``).
- ``sign_targets``: one device's targets document: metadata version and model
  release counters from the store (they never go down), issue time, expiry,
  the device, and for each model the manifest sha256 and the artifact's URL,
  sha256 and size. Signed by every configured key.

The formats and checks are ``edge_agent.sync.metadata`` (one definition for
both ends). Private keys are read, used and never logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_sync.artifacts import artifact_dir
from cloud_sync.config import CloudConfig
from cloud_sync.errors import InvalidRequest
from cloud_sync.store import Store
from edge_agent.sync import metadata, signing
from edge_agent.sync.protocol import Envelope

ROOT_EXPIRY_S = 10 * 365 * 24 * 3600


class SigningKeyError(InvalidRequest):
    code = "signing_key_invalid"


def trust_dir(config: CloudConfig) -> Path:
    return config.db_path.parent / "trust"


def load_keys(paths: list[Path]) -> list[Ed25519PrivateKey]:
    keys = []
    for path in paths:
        try:
            keys.append(signing.load_private_key(path))
        except signing.SigningError as exc:
            raise SigningKeyError(exc.message) from None
    return keys


def configured_keys(config: CloudConfig, key: Path | None = None) -> list[Ed25519PrivateKey]:
    """The signing key (``key`` or ``signing_key_path``) and the cosigning keys."""
    first = key or config.signing_key_path
    if first is None:
        raise SigningKeyError(
            "signing update metadata needs the signing key: set signing_key_path (CLOUD_SIGNING_KEY_PATH)"
        )
    return load_keys([first, *config.cosigning_key_paths])


def roots(directory: Path) -> list[Envelope]:
    """Every root version, oldest first."""
    found = []
    for path in directory.glob("*.root.json"):
        try:
            found.append((int(path.name.split(".", 1)[0]), path))
        except ValueError:
            continue
    return [Envelope.model_validate_json(p.read_bytes()) for _, p in sorted(found)]


def current_root(directory: Path) -> metadata.Root | None:
    chain = roots(directory)
    return metadata.parse_root(chain[-1]) if chain else None


def _root_doc(version: int, keys: list[Ed25519PrivateKey], threshold: int) -> metadata.Root:
    entries = {signing.key_id(k.public_key()): metadata.public_entry(k.public_key()) for k in keys}
    if threshold > len(entries):
        raise InvalidRequest(f"threshold {threshold} is more than the {len(entries)} distinct keys given")
    role = metadata.RoleKeys(keyids=sorted(entries), threshold=threshold)
    now = time.time()
    return metadata.Root(
        version=version,
        issued=now,
        expires=now + ROOT_EXPIRY_S,
        keys=entries,
        roles={"root": role, "targets": role},
    )


def _write(directory: Path, env: Envelope, version: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{version}.root.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(env.model_dump_json(indent=2))
    tmp.replace(path)


def ensure_root(directory: Path, keys: list[Ed25519PrivateKey]) -> metadata.Root:
    """The current root; version 1 (these keys, threshold 1) when there is none yet."""
    root = current_root(directory)
    if root is not None:
        return root
    doc = _root_doc(1, keys, 1)
    _write(directory, metadata.sign(metadata.document(doc), keys), 1)
    return doc


@dataclass(frozen=True, slots=True)
class Rotation:
    version: int
    keyids: list[str]
    threshold: int
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "keyids": self.keyids,
            "threshold": self.threshold,
            "path": str(self.path),
        }


def rotate(
    directory: Path, old: list[Ed25519PrivateKey], new: list[Ed25519PrivateKey], threshold: int
) -> Rotation:
    """Root N+1 trusting ``new`` with ``threshold``; must verify against root N (old keys) and itself."""
    if not new:
        raise InvalidRequest("name at least one new key")
    trusted = current_root(directory) or ensure_root(directory, old)
    doc = _root_doc(trusted.version + 1, new, threshold)
    env = metadata.sign(metadata.document(doc), [*old, *new])
    try:
        metadata.next_root(trusted, env)  # the same check every device makes
    except metadata.MetadataError as exc:
        raise SigningKeyError(f"the new root would be refused by devices: {exc.message}") from None
    _write(directory, env, doc.version)
    return Rotation(doc.version, doc.roles["root"].keyids, threshold, directory / f"{doc.version}.root.json")


def sign_targets(
    store: Store,
    directory: Path,
    keys: list[Ed25519PrivateKey],
    *,
    device: str,
    deployment: str,
    models: list[dict[str, Any]],
    expiry_s: int,
) -> tuple[list[Envelope], Envelope]:
    """(root chain, signed targets) for one device; ``models`` hold name, version, release, rollback,
    manifest, artifact_url, artifact_sha256, artifact_size."""
    root = ensure_root(directory, keys)
    role = root.roles["targets"]
    mine = {signing.key_id(k.public_key()) for k in keys} & set(role.keyids)
    if len(mine) < role.threshold:
        raise SigningKeyError(
            f"the configured signing keys are {len(mine)} of the {role.threshold} that root version "
            f"{root.version} requires for update metadata; add keys with cosigning_key_paths"
        )
    now = time.time()
    doc = metadata.Targets(
        version=store.next_counter(f"targets:{device}"),
        issued=now,
        expires=now + expiry_s,
        device=device,
        deployment=deployment,
        models=[
            metadata.TargetModel(
                name=m["name"],
                version=m["version"],
                release=m["release"],
                rollback=m["rollback"],
                stage=m.get("stage", False),
                manifest_sha256=metadata.manifest_digest(m["manifest"]),
                artifact_url=m["artifact_url"],
                artifact_sha256=m["artifact_sha256"],
                artifact_size=m["artifact_size"],
            )
            for m in models
        ],
    )
    signers = [k for k in keys if signing.key_id(k.public_key()) in role.keyids]
    return roots(directory), metadata.sign(metadata.document(doc), signers)


@dataclass(frozen=True, slots=True)
class Signer:
    """What deploying needs to sign: the keys, the root directory, the artifacts (sizes), the expiry."""

    keys: list[Ed25519PrivateKey]
    directory: Path
    artifacts: Path
    expiry_s: int

    @classmethod
    def from_config(cls, config: CloudConfig, key: Path | None = None) -> Signer:
        keys = configured_keys(config, key)
        return cls(keys, trust_dir(config), artifact_dir(config), config.targets_expiry_s)
