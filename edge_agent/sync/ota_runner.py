"""What the sync role needs around :class:`edge_agent.sync.ota.OtaUpdater`.

- ``StoreActivator``: activation for a process that serves nothing. It loads
  and self-tests the version in this process, closes it, and switches the
  store's pointer (the file every serving role follows), so the sync role
  keeps no model in memory.
- ``OtaRunner``: runs updates on its own thread, so a download never blocks
  the MQTT loop. The desired state is retained: only the latest one matters,
  so a desired state that arrives while another is applied replaces any that
  is still waiting.
- ``reported``: the ``ModelsReported`` message for an outcome.
"""

from __future__ import annotations

import logging
import threading
import time

from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.store import ModelStore, SelfTestReport
from edge_agent.sync.ota import OtaUpdater
from edge_agent.sync.protocol import ModelsDesired, ModelsReported, UpdateOutcome

logger = logging.getLogger(__name__)


class StoreActivator:
    def __init__(self, store: ModelStore, options: BackendOptions | None = None) -> None:
        self.store = store
        self.options = options or BackendOptions()

    def activate(self, name: str, version: str) -> SelfTestReport:
        model, report = self.store.load(name, version, self.options)  # raises unless the self-test passed
        model.close()
        self.store.set_active(name, version)
        return report

    def rollback(self, name: str) -> str:
        target = self.store.rollback_target(name)
        model, _ = self.store.load(name, target, self.options)
        model.close()
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


def reported(device: str, models: dict[str, str], outcome: UpdateOutcome | None) -> ModelsReported:
    """What to publish (retained, QoS 1) on ``edge/{device}/models/reported``."""
    return ModelsReported(device=device, models=models, last_update=outcome, ts=time.time())
