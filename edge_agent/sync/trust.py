"""What a device trusts, and remembers, about update metadata.

Kept in ``<data_dir>/trust/``: ``root.json`` (the newest root envelope it
accepted) and ``state.json``: the highest targets metadata version seen (and
its digest), the highest release per model, and the time floor.

Clock rule (a Raspberry Pi has no real-time clock): the time floor is the
highest trusted time seen, seeded from the agent's build time and raised by
the issue time of every verified targets document. A clock reading earlier
than the floor (less ``CLOCK_SKEW_S``) cannot be trusted: the update is
skipped and the current model keeps serving; expiry is never switched off.
A verified document issued later than the clock (more the skew) proves the
clock is behind: also skipped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import edge_agent
from edge_agent.clock import BUILD_EPOCH
from edge_agent.runtime.store import atomic_write
from edge_agent.sync.metadata import (
    ClockUntrusted,
    MetadataError,
    MetadataExpired,
    RollbackRefused,
    Root,
    Targets,
    WrongDevice,
    implicit_root,
    next_root,
    parse_root,
    parse_targets,
    verify,
)
from edge_agent.sync.metadata import digest as metadata_digest
from edge_agent.sync.protocol import Envelope

logger = logging.getLogger(__name__)

CLOCK_SKEW_S = 300.0
MAX_ROOT_STEPS = 64


def build_time() -> float:
    """When this agent was built: the mtime of its package (files in an image carry the build's),
    never earlier than ``clock.BUILD_EPOCH``: a package installed while the clock still read 1970
    (a first boot before NTP) has 1970 mtimes, and a floor there would let a 1970 clock accept
    metadata that expired long ago."""
    try:
        return max(BUILD_EPOCH, Path(edge_agent.__file__).stat().st_mtime)
    except OSError:
        return BUILD_EPOCH


@dataclass
class TrustState:
    targets_version: int = 0
    targets_digest: str = ""
    releases: dict[str, int] = field(default_factory=dict)
    time_floor: float = 0.0


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified targets document; ``seen`` when this exact document was accepted before."""

    targets: Targets
    digest: str
    seen: bool


class Trust:
    def __init__(self, directory: Path, fallback_keys: dict[str, Ed25519PublicKey]) -> None:
        self.dir = directory
        self._fallback = fallback_keys

    @staticmethod
    def build_time_seed() -> float:
        return build_time()

    # -- root ------------------------------------------------------------------------------------
    def root(self) -> Root:
        path = self.dir / "root.json"
        try:
            env = Envelope.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return implicit_root(self._fallback)
        except ValueError as exc:  # a corrupt file: refuse updates rather than trust anything
            raise MetadataError(f"trusted root {path} is unreadable ({exc}); restore it") from None
        return parse_root(env)

    def update_root(self, chain: list[Envelope]) -> Root:
        """Walk ``chain`` (any root envelopes, in any order) from the trusted root up, one version at a
        time; stores and returns the newest root reached. Older and unrelated versions are ignored."""
        trusted = self.root()
        by_version: dict[int, Envelope] = {}
        for env in chain[: MAX_ROOT_STEPS * 2]:
            by_version.setdefault(int(env.signed.get("version", -1)), env)
        steps = 0
        while trusted.version + 1 in by_version and steps < MAX_ROOT_STEPS:
            env = by_version[trusted.version + 1]
            trusted = next_root(trusted, env)
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / "root.json", env.model_dump_json().encode())
            logger.info("trusted root is now version %d", trusted.version)
            steps += 1
        return trusted

    # -- targets ---------------------------------------------------------------------------------
    def check_targets(self, root: Root, env: Envelope, device: str, now: float | None = None) -> Accepted:
        """Signatures (threshold), type, device, clock, expiry, version: raise or return the document."""
        verify(env, root.public_keys(), root.roles["targets"], "targets metadata")
        targets = parse_targets(env)
        state = self.state()
        digest = metadata_digest(env)
        if targets.device != device:
            raise WrongDevice(f"targets metadata is for device {targets.device!r}, this is {device!r}")
        if targets.version < state.targets_version:
            raise RollbackRefused(
                f"targets metadata version {targets.version} is older than version "
                f"{state.targets_version} already seen here (a replay)"
            )
        if targets.version == state.targets_version and digest != state.targets_digest:
            raise RollbackRefused(f"targets metadata version {targets.version} was seen with other content")
        now = time.time() if now is None else now
        floor = max(state.time_floor, build_time())
        if now < floor - CLOCK_SKEW_S:
            raise ClockUntrusted(
                f"device clock {_iso(now)} is earlier than the last trusted time {_iso(floor)}; "
                "update skipped until the clock is set (NTP)"
            )
        if targets.issued > now + CLOCK_SKEW_S:
            self._save(state, floor=targets.issued)
            raise ClockUntrusted(
                f"metadata issued {_iso(targets.issued)} is later than the device clock {_iso(now)}; "
                "the clock is behind: update skipped until it is set (NTP)"
            )
        if root.expires <= now:
            raise MetadataExpired(
                f"root metadata version {root.version} expired {_iso(root.expires)}; the operator must "
                "issue a new root (cloud-sync keys rotate)"
            )
        if targets.expires <= now:
            raise MetadataExpired(
                f"targets metadata version {targets.version} expired {_iso(targets.expires)} "
                f"(device clock {_iso(now)}); the cloud must re-sign it"
            )
        for m in targets.models:
            seen = state.releases.get(m.name, 0)
            if m.release < seen:
                raise RollbackRefused(
                    f"{m.name} release {m.release} is older than release {seen} already installed here"
                )
        return Accepted(targets, digest, seen=targets.version == state.targets_version)

    def accept(self, accepted: Accepted) -> None:
        """Remember a verified document: its version, its releases, its issue time as trusted time."""
        state = self.state()
        state.targets_version = accepted.targets.version
        state.targets_digest = accepted.digest
        for m in accepted.targets.models:
            state.releases[m.name] = max(state.releases.get(m.name, 0), m.release)
        self._save(state, floor=accepted.targets.issued)

    def state(self) -> TrustState:
        try:
            doc: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        except FileNotFoundError:
            return TrustState()
        except (OSError, ValueError) as exc:
            raise MetadataError(f"trust state {self.dir / 'state.json'} is unreadable ({exc})") from None
        return TrustState(
            targets_version=int(doc.get("targets_version", 0)),
            targets_digest=str(doc.get("targets_digest", "")),
            releases={str(k): int(v) for k, v in dict(doc.get("releases", {})).items()},
            time_floor=float(doc.get("time_floor", 0.0)),
        )

    def _save(self, state: TrustState, *, floor: float) -> None:
        state.time_floor = max(state.time_floor, floor)
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {
            "targets_version": state.targets_version,
            "targets_digest": state.targets_digest,
            "releases": state.releases,
            "time_floor": state.time_floor,
        }
        atomic_write(self.dir / "state.json", json.dumps(data, indent=2, sort_keys=True).encode())


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(ts, 0)))
