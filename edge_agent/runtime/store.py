"""The versioned on-disk model store.

Layout: ``<root>/<name>/<version>/{manifest.json, model file, golden.npz}``.
Which version of each model is active lives in one small JSON state file,
replaced atomically (write, fsync, rename) under a file lock, so a power cut
leaves either the old pointer or the new one, and several processes can
share the store. Every load verifies sha256 and runs the golden self-test:
a model that fails either is never activated, and the previous version stays
active. Earlier versions stay on disk for rollback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelNotFound, NoSpace, PackageError, SelfTestFailed, VersionNotFound
from edge_agent.runtime.backends import BackendOptions, LoadedModel, get_backend
from edge_agent.runtime.package import (
    MANIFEST_NAME,
    NAME_RE,
    VERSION_RE,
    Manifest,
    load_golden,
    read_manifest,
    verify_files,
)

logger = logging.getLogger(__name__)
HISTORY_LIMIT = 10


def version_key(version: str) -> tuple[Any, ...]:
    """Natural order: 2 < 10, 1.2 < 1.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p)


@dataclass(frozen=True, slots=True)
class SelfTestReport:
    name: str
    version: str
    passed: bool
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    message: str = ""


def self_test(model: LoadedModel, package_dir: Path) -> SelfTestReport:
    """Run the golden sample; compare every golden output within tolerance."""
    m = model.manifest
    inputs, expected = load_golden(package_dir, m)
    got = model.infer(inputs)
    diffs: dict[str, float] = {}
    failures: list[str] = []
    for name, want in expected.items():
        if name not in got:
            failures.append(f"output {name!r} missing")
            continue
        have = got[name]
        if have.shape != want.shape:
            failures.append(f"output {name!r} has shape {list(have.shape)}, golden has {list(want.shape)}")
            continue
        diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        diffs[name] = diff
        if not np.allclose(have, want, atol=m.golden.atol, rtol=m.golden.rtol):
            failures.append(f"output {name!r} differs by up to {diff:.3g} (tolerance atol={m.golden.atol})")
    msg = "; ".join(failures) if failures else "golden sample reproduced"
    return SelfTestReport(m.name, m.version, not failures, diffs, msg)


class ModelStore:
    def __init__(self, root: Path, state_path: Path) -> None:
        self.root = Path(root)
        self.state_path = Path(state_path)

    # -- reading -------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if NAME_RE.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        d = self.root / name
        if not NAME_RE.match(name) or not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if VERSION_RE.match(p.name) and (p / MANIFEST_NAME).is_file()]
        return sorted(found, key=version_key)

    def package_dir(self, name: str, version: str) -> Path:
        if not self.versions(name):
            raise ModelNotFound(f"no model named {name!r}; available: {self.names()}", model=name)
        if version not in self.versions(name):
            raise VersionNotFound(
                f"model {name!r} has no version {version!r}; versions: {self.versions(name)}",
                model=name,
                version=version,
            )
        return self.root / name / version

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        version = version or self.active_version(name)
        m = read_manifest(self.package_dir(name, version))
        if (m.name, m.version) != (name, version):
            raise PackageError(f"{name}/{version}: manifest says {m.name}/{m.version}")
        return m

    def verify(self, name: str, version: str | None = None) -> Manifest:
        """Manifest valid and files match their sha256; raises otherwise."""
        m = self.manifest(name, version)
        verify_files(self.package_dir(m.name, m.version), m)
        return m

    def active_version(self, name: str) -> str:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"no model named {name!r}; available: {self.names()}", model=name)
        active = self._read_state().get(name, {}).get("active")
        if active in versions:
            return str(active)
        return versions[-1]

    def is_pinned(self, name: str) -> bool:
        """Whether an active version is recorded (else the newest version serves)."""
        return self._read_state().get(name, {}).get("active") in self.versions(name)

    def history(self, name: str) -> list[str]:
        return [v for v in self._read_state().get(name, {}).get("history", []) if v in self.versions(name)]

    # -- loading -------------------------------------------------------------
    def load(
        self, name: str, version: str | None, options: BackendOptions
    ) -> tuple[LoadedModel, SelfTestReport]:
        """Verify, load and self-test one version. Raises; never returns an untested model."""
        m = self.verify(name, version)
        pkg = self.package_dir(m.name, m.version)
        model = get_backend(m.backend).load(pkg / m.file, m, options)
        try:
            report = self_test(model, pkg)
        except Exception:
            model.close()
            raise
        if not report.passed:
            model.close()
            raise SelfTestFailed(
                f"{m.name}/{m.version} failed its golden self-test: {report.message}; not activated",
                model=m.name,
                version=m.version,
            )
        return model, report

    # -- switching -------------------------------------------------------------
    def set_active(self, name: str, version: str) -> None:
        """Record ``version`` as active (callers load and self-test first)."""
        self.package_dir(name, version)
        with self._locked_state() as state:
            entry = state.setdefault(name, {"active": None, "history": []})
            versions = self.versions(name)
            previous = entry.get("active") if entry.get("active") in versions else versions[-1]
            if previous and previous != version:
                entry["history"] = ([*entry.get("history", []), previous])[-HISTORY_LIMIT:]
            entry["active"] = version

    def staged_version(self, name: str) -> str | None:
        """The version installed and self-tested for shadow evaluation, not serving (or None)."""
        staged = self._read_state().get(name, {}).get("staged")
        return str(staged) if staged and staged in self.versions(name) else None

    def staged(self) -> dict[str, str]:
        """model -> staged version, for every model that has one."""
        state = self._read_state()
        return {
            n: str(e["staged"])
            for n, e in state.items()
            if isinstance(e, dict) and e.get("staged") and e["staged"] in self.versions(n)
        }

    def set_staged(self, name: str, version: str | None) -> None:
        """Stage ``version`` (self-tested by the caller) for shadow evaluation; None clears it."""
        if version is not None:
            self.package_dir(name, version)
        serving = self.active_version(name)
        with self._locked_state() as state:
            entry = state.setdefault(name, {"active": None, "history": []})
            if entry.get("active") is None:  # pinned: else the newest on disk (staged) would serve
                entry["active"] = serving
            if version is None:
                entry.pop("staged", None)
            else:
                entry["staged"] = version

    def rollback_target(self, name: str) -> str:
        current = self.active_version(name)
        for v in reversed(self.history(name)):
            if v != current:
                return v
        raise VersionNotFound(f"model {name!r} has no earlier version to roll back to", model=name)

    def mark_rolled_back(self, name: str, target: str) -> None:
        with self._locked_state() as state:
            entry = state.setdefault(name, {"active": None, "history": []})
            hist = [v for v in entry.get("history", []) if v != target]
            entry["history"] = hist
            entry["active"] = target

    def install(self, src: Path) -> Manifest:
        """Copy a package directory into the store beside existing versions (not activated).

        Power-cut safe: the files are written into a hidden temporary directory, fsynced (files and
        directory), renamed into place and the model directory fsynced, so after a power cut a
        version is either absent or whole (the pointer, fsynced later, can never name a version
        whose files were still in the page cache). Installs of one model hold ``.install.lock``;
        under it, a temporary directory left by a process killed mid-copy is stale and removed."""
        m = read_manifest(src)
        verify_files(src, m)
        dest = self.root / m.name / m.version
        if dest.exists():
            raise PackageError(f"{m.name}/{m.version} is already installed; versions are immutable")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (dest.parent / ".install.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in dest.parent.glob(".*.*"):
                if stale.is_dir() and VERSION_RE.match(stale.name[1:].rsplit(".", 1)[0]):
                    logger.info("removing %s, left by an install that did not finish", stale)
                    shutil.rmtree(stale, ignore_errors=True)
            if dest.exists():
                raise PackageError(f"{m.name}/{m.version} is already installed; versions are immutable")
            tmp = Path(tempfile.mkdtemp(prefix=f".{m.version}.", dir=dest.parent))
            try:
                for f in src.iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
                        _fsync_path(tmp / f.name, os.O_RDONLY)
                _fsync_path(tmp, os.O_RDONLY | os.O_DIRECTORY)
                os.replace(tmp, dest)
                _fsync_path(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return m

    # -- state file ----------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("model store state %s unreadable (%s); using newest versions", self.state_path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked_state(self) -> Iterator[dict[str, Any]]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_name(self.state_path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read_state()
            yield state
            try:
                atomic_write(self.state_path, json.dumps(state, indent=2, sort_keys=True).encode())
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise NoSpace(
                    f"cannot write {self.state_path}: the disk is full; nothing changed. "
                    "Free space on that filesystem, then retry"
                ) from exc


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
