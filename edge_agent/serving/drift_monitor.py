"""Drift in the gateway: a window of each model's live inputs and answers, compared with the reference
in its package (``edge_agent.runtime.drift``) every ``EVERY_S`` on a daemon thread, written to
``<data_dir>/drift/<model>.json`` for the sync role (telemetry ``drift_psi.<model>``).

``observe`` (on the request path) only appends the batch's features and labels to bounded deques."""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime import drift
from edge_agent.runtime.store import ModelStore, atomic_write

logger = logging.getLogger(__name__)

WINDOW = 500  # rows per model
EVERY_S = 2.0


class DriftMonitor:
    def __init__(
        self, store: ModelStore, directory: Path, *, window: int = WINDOW, every_s: float = EVERY_S
    ) -> None:
        self.store, self.directory, self.window, self.every_s = store, directory, window, every_s
        self._rows: dict[str, dict[str, deque[float]]] = {}
        self._labels: dict[str, deque[str]] = {}
        self._refs: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def observe(
        self,
        model: str,
        version: str,
        batch: np.ndarray,
        results: Sequence[Mapping[str, Any]],
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        ref = self._reference(model, version)
        if ref is None:
            return
        feats = drift.features(batch, sizes)
        with self._lock:
            if self._versions.get(model) != version:  # a new version: a new window
                self._versions[model] = version
                self._rows[model] = {}
                self._labels[model] = deque(maxlen=self.window)
            rows = self._rows[model]
            for name, values in feats.items():
                rows.setdefault(name, deque(maxlen=self.window)).extend(float(v) for v in values)
            self._labels[model].extend(str(r["label"]) for r in results if "label" in r)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _reference(self, model: str, version: str) -> dict[str, Any] | None:
        key = (model, version)
        if key not in self._refs:
            try:
                self._refs[key] = drift.load_reference(self.store.package_dir(model, version))
            except Exception:  # an unknown model: no reference, never an error on the request path
                self._refs[key] = None
        return self._refs[key]

    def _run(self) -> None:
        full = False  # the last write found the disk full (said once per spell, not every turn)
        while not self._stop.wait(self.every_s):
            try:
                self._write()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    logger.exception("drift figures not written")
                elif not full:
                    logger.warning("drift figures not written while the disk is full (%s)", exc.strerror)
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                continue
            except Exception:
                logger.exception("drift figures not written")
            full = False

    def _write(self) -> None:
        with self._lock:
            snapshot = {
                m: (
                    {n: np.asarray(v) for n, v in rows.items()},
                    list(self._labels.get(m, ())),
                    self._versions[m],
                )
                for m, rows in self._rows.items()
            }
        if not snapshot:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for model, (feats, labels, version) in snapshot.items():
            ref = self._reference(model, version)
            if ref is None:
                continue
            doc = drift.compare(ref, feats, labels) | {
                "model": model,
                "version": version,
                "updated": time.time(),
            }
            atomic_write(self.directory / f"{model}.json", json.dumps(doc, sort_keys=True).encode())
