"""Signed model updates on the device: ``ModelsDesired`` -> verified, installed, self-tested, active.

A desired state is first authorised as a whole (``edge_agent.sync.trust``):

1. root metadata shipped with it is walked from the trusted root up (key
   rotation: each new root signed by a threshold of the old and new keys);
2. the targets metadata must be signed by a threshold of the targets keys,
   name this device, not be older than what was seen (metadata version and
   per-model release), not be expired, and the clock must be trustworthy;
   a model version lower than the active one needs the signed ``rollback``
   flag (the operator's decision: ``POST /devices/{id}/rollback``);
3. every model it names must match a manifest of the message (sha256 of the
   canonical manifest) and the artifact URL and sha256 travelling beside it;
   the signed size must be within ``max_artifact_bytes``.

Then for each model:

4. already active with that manifest, or this deployment already finished
   here: nothing to do (a desired state delivered twice is applied once);
5. download over HTTP into ``download_dir`` (never more than the signed
   size), resuming a partial file (``downloading`` with progress);
6. ``verifying``: the archive's sha256, a safe unpack, the unpacked manifest
   equal to the signed one, every file's sha256 (``ModelStore.install``);
7. activation: load + golden self-test + atomic pointer switch; ``active``.

Any failure is reported as ``failed`` with its reason (the check's code
first) and leaves the previous version active; a version that failed its
self-test is removed again. The last outcome per model is kept in
``state_path`` (JSON), so a restart does not redo or undo finished work; a
download failure or an untrusted clock is retried on the next delivery.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urljoin

import httpx

from edge_agent.errors import EdgeAgentError, PackageError
from edge_agent.runtime.package import Manifest, parse_manifest, read_manifest, sha256_file
from edge_agent.runtime.store import ModelStore, SelfTestReport, atomic_write, version_key
from edge_agent.sync.archive import unpack
from edge_agent.sync.download import DownloadError, fetch
from edge_agent.sync.metadata import (
    ArtifactMismatch,
    ArtifactTooLarge,
    ClockUntrusted,
    MetadataError,
    MetadataMissing,
    RollbackRefused,
    TargetModel,
    manifest_digest,
)
from edge_agent.sync.protocol import ModelsDesired, SignedModel, UpdateOutcome
from edge_agent.sync.signing import TrustedKeys, load_trusted_keys
from edge_agent.sync.trust import Trust

logger = logging.getLogger(__name__)

Report = Callable[[UpdateOutcome], None]
State = Literal["downloading", "verifying", "staged", "active", "failed", "rolled_back"]
FINAL = frozenset({"staged", "active", "failed", "rolled_back"})
MAX_REASON = 500


class Activator(Protocol):
    """What activates and rolls back: ``Engine`` in a serving process, ``StoreActivator`` otherwise."""

    def activate(self, name: str, version: str) -> SelfTestReport: ...

    def check(self, name: str, version: str) -> SelfTestReport: ...


class UpdateRefused(PackageError):
    """The update's content does not match what was signed."""

    code = "update_refused"


@dataclass(frozen=True, slots=True)
class OtaSettings:
    trusted_keys: TrustedKeys
    download_dir: Path
    state_path: Path
    base_url: str | None = None  # resolves a relative artifact_url
    max_artifact_bytes: int = 512 * 1024 * 1024
    timeout_s: float = 30.0
    attempts: int = 3
    retry_delay_s: float = 2.0
    progress_every_s: float = 1.0
    device: str = ""  # the targets metadata must name it
    trust_dir: Path | None = None  # root.json + state.json; default: beside state_path

    @classmethod
    def in_data_dir(cls, data_dir: Path, trusted_keys_file: Path, **options: Any) -> OtaSettings:
        """Settings with ``<data_dir>/downloads``, ``<data_dir>/ota-state.json`` and ``<data_dir>/trust``."""
        keys = load_trusted_keys(trusted_keys_file)
        options.setdefault("trust_dir", data_dir / "trust")
        return cls(keys, data_dir / "downloads", data_dir / "ota-state.json", **options)


class OtaUpdater:
    def __init__(
        self,
        store: ModelStore,
        activator: Activator,
        settings: OtaSettings,
        report: Report,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self.store = store
        self.activator = activator
        self.settings = settings
        self._report = report
        self._client = client or httpx.Client(timeout=httpx.Timeout(settings.timeout_s, connect=10.0))
        self._lock = threading.Lock()
        self.trust = Trust(
            settings.trust_dir or settings.state_path.parent / "trust", dict(settings.trusted_keys)
        )

    def close(self) -> None:
        self._client.close()

    # -- the two entry points ------------------------------------------------------------
    def apply(self, desired: ModelsDesired) -> list[UpdateOutcome]:
        """Bring every model of ``desired`` to its signed version; one final outcome per model."""
        with self._lock:
            done = self._all_done(desired)
            if done is not None:
                return done
            try:
                plan = self._authorise(desired)
            except MetadataError as exc:
                logger.warning("desired state %s refused: %s", desired.deployment, exc.message)
                retry = isinstance(exc, ClockUntrusted)
                return [
                    self._emit(
                        desired.deployment, *_names(s), "failed", _reason(exc), final=True, retry=retry
                    )
                    for s in desired.models
                ]
            return [self._apply_one(desired.deployment, signed, target) for signed, target in plan]

    def _all_done(self, desired: ModelsDesired) -> list[UpdateOutcome] | None:
        """Every model of this deployment already finished here: re-report, redo nothing."""
        ledger = self._ledger()
        priors = [ledger.get(_names(s)[0]) for s in desired.models]
        if not priors or not all(
            p and p["deployment"] == desired.deployment and p["state"] in FINAL and not p["retry"]
            for p in priors
        ):
            return None
        return [
            self._already_done(desired.deployment, _names(s)[0], p)
            for s, p in zip(desired.models, priors, strict=True)
            if p
        ]

    def _authorise(self, desired: ModelsDesired) -> list[tuple[SignedModel, TargetModel]]:
        """Check the metadata (roots, targets) and match every signed entry to its manifest."""
        if desired.targets is None:
            raise MetadataMissing(
                "the desired state carries no signed targets metadata (sent by a cloud older than this "
                "agent, or forged); nothing is installed"
            )
        root = self.trust.update_root(list(desired.roots))
        accepted = self.trust.check_targets(root, desired.targets, self.settings.device)
        targets = accepted.targets
        if targets.deployment != desired.deployment:
            raise ArtifactMismatch(
                f"the message names deployment {desired.deployment!r}, "
                f"the signed metadata {targets.deployment!r}"
            )
        by_digest = {manifest_digest(s.manifest): s for s in desired.models}
        plan: list[tuple[SignedModel, TargetModel]] = []
        for entry in targets.models:
            signed = by_digest.get(entry.manifest_sha256)
            where = f"{entry.name}/{entry.version}"
            if signed is None or _names(signed) != (entry.name, entry.version):
                raise ArtifactMismatch(f"{where}: no manifest in the message matches the signed sha256")
            if signed.artifact_url != entry.artifact_url:
                raise ArtifactMismatch(
                    f"{where}: artifact URL {signed.artifact_url[:200]!r} is not the signed "
                    f"{entry.artifact_url[:200]!r}"
                )
            if signed.artifact_sha256.lower() != entry.artifact_sha256:
                raise ArtifactMismatch(f"{where}: artifact sha256 differs from the signed one")
            if entry.artifact_size > self.settings.max_artifact_bytes:
                raise ArtifactTooLarge(
                    f"{where}: signed artifact size {entry.artifact_size} bytes is over this device's "
                    f"limit of {self.settings.max_artifact_bytes}"
                )
            self._check_direction(entry)
            plan.append((signed, entry))
        self.trust.accept(accepted)
        return plan

    def _check_direction(self, entry: TargetModel) -> None:
        """A version lower than the active one only with the signed ``rollback`` flag (an operator's
        decision); without it, older signed metadata re-signed with a new counter still cannot downgrade."""
        if entry.rollback or entry.name not in self.store.names():
            return
        active = self.store.active_version(entry.name)
        if version_key(entry.version) < version_key(active):
            raise RollbackRefused(
                f"{entry.name} {entry.version} is older than the active {active} and the signed metadata "
                "does not mark it a rollback (an operator's rollback is POST /devices/{id}/rollback)"
            )

    # -- one model -------------------------------------------------------------------------
    def _apply_one(self, deployment: str, signed: SignedModel, target: TargetModel) -> UpdateOutcome:
        name, version = target.name, target.version
        installed_now = False
        try:
            manifest = parse_manifest(json.dumps(signed.manifest), where="signed manifest")
            prior = self._ledger().get(name)
            if prior and prior["deployment"] == deployment and prior["state"] in FINAL and not prior["retry"]:
                return self._already_done(deployment, name, prior)
            installed = version in self.store.versions(name)
            if installed:
                if self.store.manifest(name, version) != manifest:
                    raise UpdateRefused(
                        f"{name}/{version} is installed with a different manifest; versions are immutable"
                    )
                if self.store.active_version(name) == version:
                    if not target.stage:
                        self.store.set_staged(name, None)  # a candidate withdrawn: this version stays
                    return self._emit(deployment, name, version, "active", "already active", final=True)
            if name in self.store.names():  # pin the pointer: else the newest version on disk would win
                self.store.set_active(name, self.store.active_version(name))
            if not installed:
                self._fetch_and_install(deployment, target, manifest)
                installed_now = True
            self._emit(deployment, name, version, "verifying", "golden self-test")
            if target.stage:  # installed and self-tested, not serving: shadow evaluation on live traffic
                report = self.activator.check(name, version)
                self.store.set_staged(name, version)
                logger.info("model %s: version %s staged (%s)", name, version, report.message)
                return self._emit(deployment, name, version, "staged", report.message, final=True)
            report = self.activator.activate(name, version)
            self.store.set_staged(name, None)
            logger.info("model %s: version %s active (%s)", name, version, report.message)
            return self._emit(deployment, name, version, "active", report.message, final=True)
        except DownloadError as exc:
            logger.warning("update of %s/%s: %s", name, version, exc.message)
            return self._emit(
                deployment, name, version, "failed", _reason(exc), final=True, retry=exc.retryable
            )
        except EdgeAgentError as exc:
            logger.warning("update of %s/%s refused: %s", name, version, exc.message)
            if installed_now:
                self._remove_failed(name, version)
            return self._emit(deployment, name, version, "failed", _reason(exc), final=True)
        except OSError as exc:  # disk full, permissions: worth another try once fixed
            logger.error("update of %s/%s: %s", name, version, exc)
            if installed_now:
                self._remove_failed(name, version)
            return self._emit(deployment, name, version, "failed", f"io_error: {exc}", final=True, retry=True)
        except Exception as exc:  # a bug costs this update, never the agent
            logger.exception("update of %s/%s crashed", name, version)
            if installed_now:
                self._remove_failed(name, version)
            reason = f"internal error: {type(exc).__name__}: {exc}"[:MAX_REASON]
            return self._emit(deployment, name, version, "failed", reason, final=True, retry=True)

    def _fetch_and_install(self, deployment: str, target: TargetModel, manifest: Manifest) -> None:
        sha = target.artifact_sha256
        part = self.settings.download_dir / f"{sha}.part"
        self._download(deployment, manifest, self._url(target.artifact_url), part, sha, target.artifact_size)
        self._emit(deployment, manifest.name, manifest.version, "verifying", "artifact sha256")
        got = sha256_file(part)
        if got != sha:
            part.unlink(missing_ok=True)
            raise UpdateRefused(
                f"artifact sha256 is {got[:16]}..., the desired state says {sha[:16]}...; "
                "the archive is corrupt or was tampered with; discarded"
            )
        unpacked = self.settings.download_dir / f"{sha}.unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        try:
            unpack(part, unpacked, max_bytes=self.settings.max_artifact_bytes)
            if read_manifest(unpacked) != manifest:
                raise UpdateRefused("the archive's manifest.json differs from the signed manifest")
            self.store.install(unpacked)  # checks every file's sha256 against the manifest
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
            part.unlink(missing_ok=True)

    def _download(self, deployment: str, m: Manifest, url: str, part: Path, sha: str, size: int) -> None:
        last = [0.0]

        def progress(have: int, total: int | None) -> None:
            now = time.monotonic()
            if total and (now - last[0] >= self.settings.progress_every_s or have == total):
                last[0] = now
                self._emit(
                    deployment, m.name, m.version, "downloading", None, progress=min(have / total, 1.0)
                )

        self._emit(deployment, m.name, m.version, "downloading", None, progress=0.0)
        for attempt in range(1, self.settings.attempts + 1):
            try:
                got = fetch(
                    self._client,
                    url,
                    part,
                    max_bytes=size,  # the signed size: an endless or padded artifact stops here
                    etag=f'"{sha}"',
                    progress=progress,
                )
            except DownloadError as exc:
                if not exc.retryable or attempt == self.settings.attempts:
                    raise
                logger.warning("download attempt %d of %s failed (%s); resuming", attempt, url, exc.message)
                time.sleep(self.settings.retry_delay_s * attempt)
                continue
            logger.info("downloaded %s: %d bytes (%d resumed from disk)", url, got.size, got.resumed_from)
            return

    # -- helpers -------------------------------------------------------------------------------
    def _already_done(self, deployment: str, name: str, prior: dict[str, Any]) -> UpdateOutcome:
        """A deployment delivered again: nothing is redone; the outcome is re-reported if still true."""
        logger.info("deployment %s of %s already done here (%s)", deployment, name, prior["state"])
        outcome = UpdateOutcome(
            deployment=deployment,
            model=name,
            version=str(prior["version"]),
            state=prior["state"],
            reason=prior["reason"],
            progress=1.0 if prior["state"] == "active" else None,
            ts=time.time(),
        )
        current = self.store.active_version(name) if name in self.store.names() else None
        if outcome.state == "failed" or outcome.version == current:
            self._send(outcome)
        return outcome

    def _url(self, artifact_url: str) -> str:
        return urljoin(self.settings.base_url, artifact_url) if self.settings.base_url else artifact_url

    def _remove_failed(self, name: str, version: str) -> None:
        path = self.store.root / name / version
        if path.is_dir() and self.store.active_version(name) != version:
            shutil.rmtree(path, ignore_errors=True)

    def _emit(
        self,
        deployment: str,
        name: str,
        version: str,
        state: State,
        reason: str | None,
        *,
        progress: float | None = None,
        final: bool = False,
        retry: bool = False,
    ) -> UpdateOutcome:
        outcome = UpdateOutcome(
            deployment=deployment,
            model=name,
            version=version,
            state=state,
            reason=None if reason is None else reason[:MAX_REASON],
            progress=1.0 if state == "active" else progress,
            ts=time.time(),
        )
        if final:
            self._record(outcome, retry)
        self._send(outcome)
        return outcome

    def _send(self, outcome: UpdateOutcome) -> None:
        try:
            self._report(outcome)
        except Exception:  # a failing publisher must not stop the update
            logger.exception("reporting %s of %s/%s failed", outcome.state, outcome.model, outcome.version)

    def _ledger(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.settings.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("OTA state %s unreadable (%s); starting afresh", self.settings.state_path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _record(self, outcome: UpdateOutcome, retry: bool) -> None:
        ledger = self._ledger()
        ledger[outcome.model] = outcome.model_dump(include={"deployment", "version", "state", "reason"}) | {
            "retry": retry,
            "ts": outcome.ts,
        }
        self.settings.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.settings.state_path, json.dumps(ledger, indent=2, sort_keys=True).encode())


def _names(signed: SignedModel) -> tuple[str, str]:
    return str(signed.manifest.get("name", "?"))[:64], str(signed.manifest.get("version", "?"))[:32]


def _reason(exc: EdgeAgentError) -> str:
    return f"{exc.code}: {exc.message}"
