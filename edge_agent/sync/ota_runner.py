"""What the sync role needs around :class:`edge_agent.sync.ota.OtaUpdater`.

- ``StoreActivator``: activation for a process that serves nothing. It loads
  and self-tests the version in a short-lived child process (spawned: the sync
  role itself never imports onnxruntime or LiteRT, memory being the Pi's
  scarcest resource), then switches the store's pointer (the file every
  serving role follows).
- ``OtaRunner``: runs updates on its own thread, so a download never blocks
  the MQTT loop. The desired state is retained: only the latest one matters,
  so a desired state that arrives while another is applied replaces any that
  is still waiting.
- ``reported``: the ``ModelsReported`` message for an outcome.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.store import ModelStore, SelfTestReport
from edge_agent.sync.ota import OtaUpdater
from edge_agent.sync.protocol import ModelsDesired, ModelsReported, ShadowReport, UpdateOutcome

logger = logging.getLogger(__name__)


def _load_and_test(
    root: Path, state: Path, name: str, version: str, options: BackendOptions
) -> SelfTestReport:
    """Verify, load and self-test one version; raises unless it passed (runs in a child process)."""
    model, report = ModelStore(root, state).load(name, version, options)
    model.close()
    return report


class StoreActivator:
    """Load + self-test, then switch the store's pointer. With ``isolate`` (the default) the load
    runs in a short-lived child process, so the sync role never imports a runtime library."""

    def __init__(
        self, store: ModelStore, options: BackendOptions | None = None, *, isolate: bool = True
    ) -> None:
        self.store = store
        self.options = options or BackendOptions()
        self.isolate = isolate

    def check(self, name: str, version: str) -> SelfTestReport:
        """Load + self-test only (staging)."""
        return self._check(name, version)

    def _check(self, name: str, version: str) -> SelfTestReport:
        args = (self.store.root, self.store.state_path, name, version, self.options)
        if not self.isolate:
            return _load_and_test(*args)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                return pool.submit(_load_and_test, *args).result()
            except BrokenProcessPool:
                raise EdgeAgentError(f"the self-test of {name}/{version} crashed its process") from None

    def activate(self, name: str, version: str) -> SelfTestReport:
        report = self._check(name, version)
        self.store.set_active(name, version)
        return report

    def rollback(self, name: str) -> str:
        target = self.store.rollback_target(name)
        self._check(name, target)
        self.store.mark_rolled_back(name, target)
        return target


class OtaRunner:
    def __init__(self, updater: OtaUpdater) -> None:
        self.updater = updater
        self._pending: ModelsDesired | None = None
        self._stopping = False
        self._wake = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="sync-ota", daemon=True)
        self._thread.start()

    def submit(self, desired: ModelsDesired) -> None:
        """Apply ``desired`` soon (returns at once); replaces a desired state still waiting."""
        with self._wake:
            self._pending = desired
            self._idle.clear()
            self._wake.notify()

    def wait_idle(self, timeout_s: float) -> bool:
        return self._idle.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the update in progress (a download resumes after a restart), then stop."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout_s)
        self.updater.close()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._stopping:
                    self._idle.set()
                    self._wake.wait()
                if self._stopping:
                    return
                desired, self._pending = self._pending, None
            if desired is None:
                continue
            try:
                self.updater.apply(desired)
            except Exception:  # apply reports its own failures; this is a bug, and the next one runs
                logger.exception("applying desired state %s failed", desired.deployment)


def reported(
    device: str,
    models: dict[str, str],
    outcome: UpdateOutcome | None,
    shadow: dict[str, ShadowReport] | None = None,
) -> ModelsReported:
    """What to publish (retained, QoS 1) on ``edge/{device}/models/reported``."""
    return ModelsReported(
        device=device, models=models, last_update=outcome, ts=time.time(), shadow=shadow or {}
    )


def read_shadow(directory: Path) -> dict[str, ShadowReport]:
    """The figures the gateway wrote in ``<data_dir>/shadow/`` (unreadable files are skipped)."""
    out: dict[str, ShadowReport] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            out[path.stem] = ShadowReport.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
    return out
