"""Update metadata: the ONE definition of the signed documents both ends use.

Two roles, after The Update Framework (TUF) and Uptane's director:

- ``root``: which keys are trusted for which role, and how many of them must
  sign (threshold). A new root is version N+1 and must be signed by a
  threshold of the *old* root's keys and of its own: that is how keys rotate
  and how a stolen key is revoked.
- ``targets``: what ONE device is to run. Signed by a threshold of the
  targets keys; names the device, carries a metadata version that never goes
  down on the device, an issue time and an expiry, and for each model the
  version, a release counter (never goes down unless a new signed decision
  says so), the sha256 of the manifest, the artifact's URL, sha256 and size.

Every document travels as an envelope ``{"signed": {...}, "signatures":
[{"keyid", "sig"}]}``; a signature is Ed25519 over the canonical JSON of
``signed`` (``edge_agent.sync.signing.canonical_json``). Checks raise
``MetadataError`` subclasses whose ``code`` is the reason a device reports.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import EdgeAgentError
from edge_agent.sync.protocol import MAX_SIGNATURES, Envelope, Signature
from edge_agent.sync.signing import canonical_json, key_id

SPEC_VERSION = 1
ROLES = ("root", "targets")
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class MetadataError(EdgeAgentError):
    """Update metadata refused; ``code`` says which check failed."""

    status = 422
    code = "metadata_invalid"


class MetadataMissing(MetadataError):
    code = "metadata_missing"


class UntrustedKey(MetadataError):
    code = "untrusted_key"


class ThresholdNotMet(MetadataError):
    code = "threshold_not_met"


class RollbackRefused(MetadataError):
    code = "rollback_refused"


class MetadataExpired(MetadataError):
    code = "metadata_expired"


class WrongDevice(MetadataError):
    code = "wrong_device"


class ArtifactMismatch(MetadataError):
    code = "artifact_mismatch"


class ArtifactTooLarge(MetadataError):
    code = "artifact_too_large"


class ClockUntrusted(MetadataError):
    code = "clock_untrusted"


class RootRotationInvalid(MetadataError):
    code = "root_rotation_invalid"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def digest(env: Envelope) -> str:
    """sha256 of the canonical signed part: the identity of a document."""
    return hashlib.sha256(canonical_json(env.signed)).hexdigest()


class RoleKeys(_Doc):
    keyids: list[str] = Field(min_length=1, max_length=MAX_SIGNATURES)
    threshold: int = Field(ge=1, le=MAX_SIGNATURES)

    @model_validator(mode="after")
    def _reachable(self) -> RoleKeys:
        if self.threshold > len(set(self.keyids)):
            raise ValueError(f"threshold {self.threshold} is more than the {len(set(self.keyids))} keys")
        return self


class PublicKey(_Doc):
    keytype: Literal["ed25519"] = "ed25519"
    public: str = Field(description="raw 32-byte public key, base64")

    def key(self) -> Ed25519PublicKey:
        try:
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public, validate=True))
        except (binascii.Error, ValueError):
            raise MetadataError("a root key is not a valid Ed25519 public key") from None


class Root(_Doc):
    type: Literal["root"] = Field(alias="_type", default="root")
    spec: int = SPEC_VERSION
    version: int = Field(ge=0)
    issued: float
    expires: float
    keys: dict[str, PublicKey]
    roles: dict[Literal["root", "targets"], RoleKeys]

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _complete(self) -> Root:
        for role in ROLES:
            if role not in self.roles:
                raise ValueError(f"root names no {role!r} role")
            missing = set(self.roles[role].keyids) - set(self.keys)
            if missing:
                raise ValueError(f"role {role} names keys the root does not list: {sorted(missing)}")
        return self

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {kid: k.key() for kid, k in self.keys.items()}


class TargetModel(_Doc):
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=32)
    release: int = Field(ge=1, description="Per-model counter; never goes down on a device.")
    rollback: bool = Field(default=False, description="An operator's signed decision to go back.")
    stage: bool = Field(
        default=False,
        description="Install and self-test only: a candidate for shadow evaluation, not served.",
    )
    manifest_sha256: str = Field(pattern=SHA256_PATTERN)
    artifact_url: str = Field(min_length=1, max_length=2048)
    artifact_sha256: str = Field(pattern=SHA256_PATTERN)
    artifact_size: int = Field(ge=1)


class Targets(_Doc):
    type: Literal["targets"] = Field(alias="_type", default="targets")
    spec: int = SPEC_VERSION
    version: int = Field(ge=1, description="Per-device metadata version; never goes down on the device.")
    issued: float
    expires: float
    device: str = Field(min_length=1, max_length=64)
    deployment: str = Field(min_length=1, max_length=64)
    models: list[TargetModel] = Field(min_length=1, max_length=32)

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)


# -- signing ----------------------------------------------------------------------------------------
def public_entry(key: Ed25519PublicKey) -> PublicKey:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(public=base64.b64encode(raw).decode("ascii"))


def document(doc: Root | Targets) -> dict[str, Any]:
    return doc.model_dump(mode="json", by_alias=True)


def sign(signed: Mapping[str, Any], keys: Iterable[Ed25519PrivateKey]) -> Envelope:
    data = canonical_json(dict(signed))
    sigs = {
        key_id(k.public_key()): base64.b64encode(k.sign(data)).decode("ascii") for k in keys
    }  # one signature per key, however often a key is named
    return Envelope(
        signed=dict(signed), signatures=[Signature(keyid=i, sig=s) for i, s in sorted(sigs.items())]
    )


def verify(env: Envelope, keys: Mapping[str, Ed25519PublicKey], role: RoleKeys, what: str) -> int:
    """How many of ``role``'s keys validly signed ``env``; raises unless it is at least the threshold."""
    data = canonical_json(env.signed)
    good: set[str] = set()
    foreign: list[str] = []
    for s in env.signatures:
        public = keys.get(s.keyid) if s.keyid in role.keyids else None
        if public is None:
            foreign.append(s.keyid)
            continue
        try:
            public.verify(base64.b64decode(s.sig, validate=True), data)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        good.add(s.keyid)
    if len(good) >= role.threshold:
        return len(good)
    if not good and foreign:
        raise UntrustedKey(
            f"{what} is signed by key(s) {', '.join(sorted(foreign))[:200]} that this device does not "
            f"trust for it (trusted: {', '.join(role.keyids)})"
        )
    raise ThresholdNotMet(
        f"{what} has {len(good)} valid signature(s) by trusted keys; {role.threshold} required"
    )


def parse_root(env: Envelope) -> Root:
    try:
        return Root.model_validate(env.signed)
    except ValidationError as exc:
        raise MetadataError(f"root metadata is malformed: {_problems(exc)}") from None


def parse_targets(env: Envelope) -> Targets:
    try:
        return Targets.model_validate(env.signed)
    except ValidationError as exc:
        raise MetadataError(f"targets metadata is malformed: {_problems(exc)}") from None


def implicit_root(trusted: Mapping[str, Ed25519PublicKey]) -> Root:
    """Root version 0 of a device that only has a trusted-keys PEM file (before this scheme):
    every key is trusted for both roles with threshold 1. Root version 1, signed by one of
    these keys, replaces it the first time the cloud sends metadata (no manual step)."""
    keys = {kid: public_entry(k) for kid, k in trusted.items()}
    role = RoleKeys(keyids=sorted(keys), threshold=1)
    return Root(
        version=0, issued=0.0, expires=float("1e12"), keys=keys, roles={"root": role, "targets": role}
    )


def next_root(trusted: Root, env: Envelope) -> Root:
    """The root after ``trusted``: version + 1, signed by a threshold of the old and of the new keys."""
    new = parse_root(env)
    if new.version != trusted.version + 1:
        raise RootRotationInvalid(f"root version {new.version} does not follow the trusted {trusted.version}")
    try:
        verify(env, trusted.public_keys(), trusted.roles["root"], f"root version {new.version}")
        verify(env, new.public_keys(), new.roles["root"], f"root version {new.version} (its own keys)")
    except MetadataError as exc:
        raise RootRotationInvalid(exc.message) from None
    return new


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(manifest))).hexdigest()


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
