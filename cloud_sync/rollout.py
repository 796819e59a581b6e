"""Staged rollouts: waves that start when the previous one is healthy and halt by themselves.

A rollout takes one model version to a set of devices in waves (by default 1
device, 10 %, 50 %, all; or explicit device lists). Each wave goes:

1. ``staging``: a deployment with ``stage`` set: the devices download, verify
   and self-test the version and keep it beside the serving one;
2. ``evaluating``: the gateways copy a sample of live requests to it (shadow
   evaluation); the wave waits until every device reported ``min_samples``;
3. ``promoting``: a deployment without ``stage`` makes it serve; ``done`` when
   every device is active; then the next wave starts.

A breach halts the rollout and rolls the wave back (a signed deployment of
each device's previous version, which also withdraws the staged candidate):
install or self-test failures above ``max_failure_rate``, a device's shadow
agreement below ``min_agreement``, its latency ratio above
``max_latency_ratio``, or no verdict within ``wave_timeout_s``. Devices of
later waves never receive the version. An operator can pause, resume and
abort (abort rolls back the wave in progress).

``RolloutDriver`` runs in the API process and calls ``Rollouts.tick`` every
``TICK_S``; every decision is kept in the rollout's document with the figures
that made it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud_sync.deploy import deploy
from cloud_sync.errors import CloudSyncError, InvalidRequest
from cloud_sync.mqtt import MqttLink
from cloud_sync.store import Store
from cloud_sync.trust import Signer

logger = logging.getLogger(__name__)

TICK_S = 1.0
DEFAULT_STEPS = (1.0, 0.10, 0.50, 1.0)
ACTIVE = ("running", "paused")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_agreement: float = Field(default=0.95, ge=0, le=1, description="Shadow agreement every device needs.")
    max_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of a wave's devices that may fail install or self-test."
    )
    max_latency_ratio: float = Field(
        default=2.0, gt=0, description="Candidate / active median compute time a device may show at most."
    )
    min_samples: int = Field(
        default=20, ge=1, le=100_000, description="Shadow samples per device before a verdict."
    )
    wave_timeout_s: float = Field(default=900, gt=0, description="A wave with no verdict by then halts.")


def waves_by_group(devices: list[dict[str, Any]], groups: list[str]) -> list[list[str]]:
    """One wave per group, in the order given, from the groups devices report (``EDGE_GROUP``);
    ``*`` stands for every device not in a named group."""
    named = set(groups)
    waves = []
    for g in groups:
        if g == "*":
            wave = sorted(d["id"] for d in devices if d.get("rollout_group") not in named)
        else:
            wave = sorted(d["id"] for d in devices if d.get("rollout_group") == g)
        if not wave:
            raise InvalidRequest(f"no device reports the rollout group {g!r}")
        waves.append(wave)
    return waves


def plan_waves(devices: list[str], steps: tuple[float, ...] | list[float] = DEFAULT_STEPS) -> list[list[str]]:
    """Cumulative steps: a number >= 1 is a device count, below 1 a share of the fleet; empty waves go."""
    ordered = sorted(devices)
    waves, done = [], 0
    for step in steps:
        upto = min(len(ordered), int(step) if step >= 1 else math.ceil(step * len(ordered)))
        if upto > done:
            waves.append(ordered[done:upto])
            done = upto
    if done < len(ordered):
        waves.append(ordered[done:])
    return waves


class Rollouts:
    """The rollout state machine over the store; ``deploy`` is ``cloud_sync.deploy.deploy``."""

    def __init__(self, store: Store, link: MqttLink, signer: Callable[[], Signer]) -> None:
        self.store, self.link, self.signer = store, link, signer
        # one writer of a rollout's document at a time in this process: the driver's step and an
        # operator's pause/resume/abort each read, change and save the whole document, so without
        # it a step that read "running" could save over a pause made meanwhile
        self._lock = threading.RLock()

    # -- operator actions -------------------------------------------------------------------------
    def create(
        self,
        model: str,
        version: str,
        devices: list[str],
        *,
        base_url: str,
        waves: list[list[str]] | None = None,
        thresholds: Thresholds | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        self.store.model_version(model, version)  # 404 for an unknown version
        plan = waves or plan_waves(devices)
        flat = [d for wave in plan for d in wave]
        if not flat:
            raise InvalidRequest("a rollout needs at least one device")
        if len(set(flat)) != len(flat):
            raise InvalidRequest("a device is named in more than one wave")
        previous = {}
        for device in flat:
            try:
                row = self.store.device(device)
            except CloudSyncError:
                row = {}
            serving = row.get("reported_models") or row.get("models") or {}  # update report, else status
            previous[device] = serving.get(model)
        now = time.time()
        doc: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "model": model,
            "version": version,
            "base_url": base_url,
            "note": note,
            "thresholds": (thresholds or Thresholds()).model_dump(),
            "state": "running",
            "reason": None,
            "wave": 0,
            "previous": previous,
            "waves": [{"devices": w, "state": "pending", "figures": {}, "decision": None} for w in plan],
            "events": [{"ts": now, "what": f"created: {len(plan)} waves, {len(flat)} devices"}],
        }
        self._save(doc)
        return doc

    def pause(self, rollout_id: str) -> dict[str, Any]:
        with self._lock:
            return self._pause(rollout_id)

    def _pause(self, rollout_id: str) -> dict[str, Any]:
        doc = self._get(rollout_id)
        if doc["state"] != "running":
            raise InvalidRequest(f"rollout {rollout_id} is {doc['state']}, not running")
        return self._set(doc, "paused", "paused by the operator")

    def resume(self, rollout_id: str) -> dict[str, Any]:
        with self._lock:
            return self._resume(rollout_id)

    def _resume(self, rollout_id: str) -> dict[str, Any]:
        doc = self._get(rollout_id)
        if doc["state"] != "paused":
            raise InvalidRequest(f"rollout {rollout_id} is {doc['state']}, not paused")
        return self._set(doc, "running", "resumed by the operator")

    def abort(self, rollout_id: str) -> dict[str, Any]:
        with self._lock:
            return self._abort(rollout_id)

    def _abort(self, rollout_id: str) -> dict[str, Any]:
        doc = self._get(rollout_id)
        if doc["state"] not in ACTIVE:
            raise InvalidRequest(f"rollout {rollout_id} is {doc['state']}; nothing to abort")
        wave = doc["waves"][doc["wave"]] if doc["wave"] < len(doc["waves"]) else None
        if wave and wave["state"] in ("staging", "evaluating", "promoting"):
            self._roll_back(doc, wave)
        return self._set(doc, "aborted", "aborted by the operator")

    def get(self, rollout_id: str) -> dict[str, Any]:
        return self._get(rollout_id)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [r["doc"] for r in self.store.rollouts(limit=limit)]

    # -- the driver's step ----------------------------------------------------------------------------
    def tick_all(self) -> None:
        for row in self.store.rollouts(states=["running"]):
            try:
                with self._lock:
                    self.tick(self._get(row["id"]))  # read again: an operator may have acted since
            except CloudSyncError as exc:  # e.g. the broker is away: try again next tick
                logger.warning("rollout %s: %s", row["id"], exc.message)

    def tick(self, doc: dict[str, Any]) -> None:
        if doc["state"] != "running":
            return
        if doc["wave"] >= len(doc["waves"]):
            self._set(doc, "done", "every wave is active")
            return
        wave = doc["waves"][doc["wave"]]
        limits = Thresholds.model_validate(doc["thresholds"])
        step = getattr(self, f"_{wave['state']}")
        step(doc, wave, limits)
        self._save(doc)  # every step's changes (deployment ids, figures), whatever the step did

    def _pending(self, doc: dict[str, Any], wave: dict[str, Any], limits: Thresholds) -> None:
        wave["stage_deployment"] = self._deploy(doc, wave["devices"], doc["version"], stage=True)
        wave["started"] = time.time()
        wave["state"] = "staging"
        self._event(doc, f"wave {doc['wave'] + 1}: staging on {', '.join(wave['devices'])}")

    def _staging(self, doc: dict[str, Any], wave: dict[str, Any], limits: Thresholds) -> None:
        states = self._states(wave["stage_deployment"])
        failed = {d: s for d, s in states.items() if s["state"] == "failed"}
        if len(failed) / len(wave["devices"]) > limits.max_failure_rate:
            d, s = next(iter(sorted(failed.items())))
            self._breach(
                doc, wave, f"{len(failed)} of {len(wave['devices'])} failed to stage ({d}: {s['reason']})"
            )
        elif all(states.get(d, {}).get("state") in ("staged", "active") for d in wave["devices"]):
            wave["state"] = "evaluating"
            self._event(doc, f"wave {doc['wave'] + 1}: staged; shadow evaluation")
        else:
            self._timeout(doc, wave, limits)

    def _evaluating(self, doc: dict[str, Any], wave: dict[str, Any], limits: Thresholds) -> None:
        ready = True
        for device in wave["devices"]:
            figures = self._shadow(device, doc["model"], doc["version"])
            if figures is None:
                ready = False
                continue
            wave["figures"][device] = figures
            if figures["samples"] < limits.min_samples:
                ready = False
                continue
            agreement, ratio = figures.get("agreement"), figures.get("latency_ratio")
            if agreement is not None and agreement < limits.min_agreement:
                self._breach(
                    doc,
                    wave,
                    f"{device}: shadow agreement {agreement:.3f} < {limits.min_agreement} "
                    f"over {figures['samples']} samples",
                )
                return
            if ratio is not None and ratio > limits.max_latency_ratio:
                self._breach(doc, wave, f"{device}: latency ratio {ratio:.2f} > {limits.max_latency_ratio}")
                return
        if ready:
            wave["decision"] = "shadow figures within thresholds on every device"
            wave["promote_deployment"] = self._deploy(doc, wave["devices"], doc["version"], stage=False)
            wave["state"] = "promoting"
            self._event(doc, f"wave {doc['wave'] + 1}: {wave['decision']}; promoting")
        else:
            self._timeout(doc, wave, limits)

    def _promoting(self, doc: dict[str, Any], wave: dict[str, Any], limits: Thresholds) -> None:
        states = self._states(wave["promote_deployment"])
        failed = {d: s for d, s in states.items() if s["state"] == "failed"}
        if len(failed) / len(wave["devices"]) > limits.max_failure_rate:
            d, s = next(iter(sorted(failed.items())))
            self._breach(doc, wave, f"{len(failed)} failed to activate ({d}: {s['reason']})")
        elif all(states.get(d, {}).get("state") == "active" for d in wave["devices"]):
            wave["state"] = "done"
            self._event(doc, f"wave {doc['wave'] + 1}: active on every device")
            doc["wave"] += 1
            if doc["wave"] >= len(doc["waves"]):
                self._set(doc, "done", "every wave is active")
                return
            self._save(doc)
        else:
            self._timeout(doc, wave, limits)

    # -- helpers ------------------------------------------------------------------------------------
    def _timeout(self, doc: dict[str, Any], wave: dict[str, Any], limits: Thresholds) -> None:
        if time.time() - wave.get("started", time.time()) > limits.wave_timeout_s:
            self._breach(doc, wave, f"no verdict within {limits.wave_timeout_s:.0f} s ({wave['state']})")
        else:
            self._save(doc)

    def _breach(self, doc: dict[str, Any], wave: dict[str, Any], reason: str) -> None:
        wave["decision"] = f"breach: {reason}"
        self._roll_back(doc, wave)
        self._set(doc, "halted", f"wave {doc['wave'] + 1} halted and rolled back: {reason}")

    def _roll_back(self, doc: dict[str, Any], wave: dict[str, Any]) -> None:
        by_version: dict[str, list[str]] = {}
        for device in wave["devices"]:
            previous = doc["previous"].get(device)
            if previous:
                by_version.setdefault(previous, []).append(device)
        wave["rollback_deployments"] = []
        for version, devices in sorted(by_version.items()):
            try:
                wave["rollback_deployments"].append(
                    self._deploy(doc, devices, version, stage=False, rollback=True)
                )
            except CloudSyncError as exc:  # recorded; the halt or abort still stands
                self._event(doc, f"roll back of {', '.join(devices)} to {version} failed: {exc.message}")
        wave["state"] = "rolled_back"

    def _deploy(
        self, doc: dict[str, Any], devices: list[str], version: str, *, stage: bool, rollback: bool = False
    ) -> str:
        status = deploy(
            self.store,
            self.link,
            doc["model"],
            version,
            devices=devices,
            base_url=doc["base_url"],
            signer=self.signer(),
            note=f"rollout {doc['id']}" + (" (stage)" if stage else " (roll back)" if rollback else ""),
            rollback=rollback,
            stage=stage,
        )
        return str(status["id"])

    def _states(self, deployment: str) -> dict[str, dict[str, Any]]:
        return {d["device"]: d for d in self.store.deployment_status(deployment)["devices"]}

    def _shadow(self, device: str, model: str, version: str) -> dict[str, Any] | None:
        try:
            shadow = self.store.device(device).get("shadow") or {}
        except CloudSyncError:
            return None
        figures = shadow.get(model)
        return dict(figures) if figures and figures.get("candidate") == version else None

    def _get(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.store.rollout(rollout_id)["doc"])

    def _event(self, doc: dict[str, Any], what: str) -> None:
        logger.info("rollout %s: %s", doc["id"], what)
        doc["events"] = [*doc["events"], {"ts": time.time(), "what": what}][-200:]

    def _set(self, doc: dict[str, Any], state: str, reason: str) -> dict[str, Any]:
        doc["state"], doc["reason"] = state, reason
        self._event(doc, f"{state}: {reason}")
        self._save(doc)
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        self.store.save_rollout(doc["id"], doc["state"], doc, time.time())


class RolloutDriver:
    """A daemon thread in the API process: ``Rollouts.tick_all`` every ``TICK_S``."""

    def __init__(self, rollouts: Rollouts, tick_s: float = TICK_S) -> None:
        self.rollouts, self.tick_s = rollouts, tick_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.rollouts.tick_all()
            except Exception:  # a bug in one tick must not stop the driver
                logger.exception("rollout tick failed")
