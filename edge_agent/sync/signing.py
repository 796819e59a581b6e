"""Ed25519 signatures over model manifests: the ONE definition both ends use.

The cloud (``cloud_sync.deploy``) signs and the device (``edge_agent.sync.ota``)
verifies the same bytes: the manifest as canonical JSON (keys sorted, no
whitespace, ASCII only, no NaN/Infinity). A signature travels as base64 next to
the id of the key that made it (``key_id``: the first 16 hex digits of the
sha256 of the raw 32-byte public key), so a device can trust several keys at
once while a signing key is rotated.

Private keys are PEM (PKCS#8, unencrypted; keep the file mode 0600), public
keys PEM (SubjectPublicKeyInfo). A file of trusted keys may hold several PEM
blocks. Nothing here logs or prints key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import EdgeAgentError

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)

TrustedKeys = Mapping[str, Ed25519PublicKey]


class SigningError(EdgeAgentError):
    """A key cannot be read or is not an Ed25519 key."""

    status = 422
    code = "signing_key_invalid"


class SignatureError(EdgeAgentError):
    """A signature does not verify: the manifest was altered or signed by another key."""

    status = 422
    code = "signature_invalid"


class UnknownKey(SignatureError):
    """The manifest was signed by a key this device does not trust."""

    code = "signature_unknown_key"


def canonical_json(value: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, ASCII, finite numbers only."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"the manifest cannot be encoded canonically: {exc}") from None
    return text.encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # never echo the file: it is a secret
        raise SigningError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def parse_public_keys(data: bytes, where: str = "public key") -> dict[str, Ed25519PublicKey]:
    """key id -> key, for every PEM public key block in ``data``."""
    keys: dict[str, Ed25519PublicKey] = {}
    for block in _PEM_BLOCK.findall(data):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError):
            raise SigningError(f"{where}: a PEM block is not a valid public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"{where}: holds a {type(key).__name__}, not an Ed25519 public key")
        keys[key_id(key)] = key
    if not keys:
        raise SigningError(f"{where}: no PEM public key found")
    return keys


def load_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """The public keys a device trusts: one file with one or more PEM blocks."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read trusted keys {path}: {exc.strerror}") from None
    return parse_public_keys(data, str(path))


def sign_manifest(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> tuple[str, str]:
    """(base64 signature, key id) over ``canonical_json(manifest)``."""
    signature = key.sign(canonical_json(dict(manifest)))
    return base64.b64encode(signature).decode("ascii"), key_id(key.public_key())


def verify_manifest(manifest: Mapping[str, Any], signature: str, signer: str, trusted: TrustedKeys) -> None:
    """Raise ``UnknownKey`` or ``SignatureError`` unless ``signature`` by ``signer`` covers ``manifest``."""
    public = trusted.get(signer)
    if public is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise UnknownKey(f"signed by unknown key {signer[:32]!r} (trusted: {known})", key_id=signer[:32])
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    try:
        public.verify(raw, canonical_json(dict(manifest)))
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {signer} does not match the manifest (altered, or signed by another key)",
            key_id=signer,
        ) from None
