"""The dashboard's live feed: one poller per app, fanned out as server-sent events.

The ingest role writes the database; the API process learns of changes by reading it. One
background task polls every ``interval_s`` while a browser listens. It reads only the devices
seen since its last read (``devices.last_seen``, indexed; every message a device sends moves
it), with their newest telemetry and results count, plus the fleet summary the database
computes, and keeps the fleet in memory. Browsers get:

* ``event: fleet`` once on connecting (and after a reconnect): every device, the summary and the
  change markers, so a page that missed events is never out of date;
* ``event: fleet-delta`` afterwards: only the devices whose row changed, the summary, the
  markers. A fleet of 10,000 where 50 devices report a second sends 50 rows a second, not 10,000.

Every ``FULL_EVERY_S`` the poller re-reads the whole fleet (the one-hour results count of a
device that went quiet slides down without the device sending anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool

from cloud_sync.errors import CloudSyncError
from cloud_sync.mqtt import MqttLink
from cloud_sync.store import Store

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
RESULTS_WINDOW_S = 3600.0
FULL_EVERY_S = 60.0
# A device row is re-read if seen this long before the last poll: an ingest transaction stamps
# `received` when the message arrives and commits a little later. A row committed later still
# than this shows at the next full re-read (FULL_EVERY_S).
COMMIT_LAG_S = 3.0


def device_rows(store: Store, devices: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """What the fleet page shows of each device (newest telemetry and results of those devices only)."""
    ids = [d["id"] for d in devices]
    recent = store.recent_result_counts(now - RESULTS_WINDOW_S, ids)
    latest = {d: json.loads(m) for d, m in store.latest_metrics(ids).items()}
    rows = []
    for d in devices:
        metrics = latest.get(d["id"], {})
        models = d.get("reported_models") or d.get("models") or {}
        rows.append(
            {
                "id": d["id"],
                "online": d["online"] if d["state"] is not None else None,
                "last_seen": d["last_seen"],
                "agent_version": d["agent_version"] or "",
                "models": models if isinstance(models, dict) else {},
                "outbox_depth": metrics.get("outbox_depth"),
                "rss_bytes": metrics.get("rss_bytes"),
                "results_last_hour": int(recent.get(d["id"], 0)),
                # drift per model from the latest telemetry (edge_agent.runtime.drift): PSI and the flag
                "drift": {
                    k.removeprefix("drift_psi."): v for k, v in metrics.items() if k.startswith("drift_psi.")
                },
                "drifted": sorted(
                    k.removeprefix("drift_flag.")
                    for k, v in metrics.items()
                    if k.startswith("drift_flag.") and v >= 1
                ),
            }
        )
    return rows


def fleet_snapshot(store: Store, broker_connected: bool, now: float | None = None) -> dict[str, Any]:
    """Every device with what the fleet page shows, the summary, and the markers of change."""
    now = time.time() if now is None else now
    return {"devices": device_rows(store, store.devices(), now)} | _marks(store, broker_connected)


def _marks(store: Store, broker_connected: bool) -> dict[str, Any]:
    newest, update = store.newest_marks()
    bench = store.bench_updated()
    return {
        "summary": store.fleet_summary(),
        "broker_connected": broker_connected,
        "newest_result": newest,
        "deployment_update": update,
        "bench_update": bench,
    }


class FleetCache:
    """The fleet as last read, and what the next read changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.devices: dict[str, dict[str, Any]] = {}
        self.read_at: float | None = None
        self.full_at = 0.0

    def refresh(self, broker_connected: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(devices whose row changed, the markers); reads only what was seen since the last read."""
        now = time.time()
        full = self.read_at is None or now - self.full_at >= FULL_EVERY_S
        if full:
            seen = self.store.devices()
            self.full_at = now
        else:
            assert self.read_at is not None
            seen = self.store.devices_seen_since(self.read_at - COMMIT_LAG_S)
        self.read_at = now
        changed = []
        for row in device_rows(self.store, seen, now):
            if self.devices.get(row["id"]) != row:
                self.devices[row["id"]] = row
                changed.append(row)
        return changed, _marks(self.store, broker_connected)


class Feed:
    """Polls the store while at least one browser listens; ``stream()`` yields SSE frames."""

    def __init__(self, store: Store, link: MqttLink, interval_s: float = 1.0) -> None:
        self.store, self.link, self.interval_s = store, link, interval_s
        self.cache = FleetCache(store)
        self._marks: dict[str, Any] | None = None
        self._error: str | None = None
        self._deltas: list[str] = []  # the SSE data of each delta, by version
        self._version = 0
        self._changed = asyncio.Condition()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None

    def full_text(self) -> str:
        if self._error is not None:
            return json.dumps({"error": self._error, "ts": time.time()})
        devices = sorted(self.cache.devices.values(), key=lambda d: str(d["id"]))
        return json.dumps({"devices": devices} | (self._marks or {}) | {"ts": time.time()})

    async def _poll(self) -> None:
        while self._listeners > 0:
            error = None
            try:
                changed, marks = await run_in_threadpool(self.cache.refresh, self.link.connected)
            except (CloudSyncError, OSError, ValueError) as exc:
                logger.warning("fleet feed: cannot read the store: %s", exc)
                error, changed, marks = f"cannot read the cloud database: {exc}", [], self._marks or {}
            except Exception:  # one bad read must not end the feed for every browser
                logger.exception("fleet feed: unexpected error")
                error, changed, marks = (
                    "internal error reading the fleet; see the API log",
                    [],
                    self._marks or {},
                )
            if changed or marks != self._marks or error != self._error:
                self._marks, self._error = marks, error
                delta = {"devices": changed} | marks | ({"error": error} if error else {})
                self._deltas.append(json.dumps(delta | {"ts": time.time()}))
                del self._deltas[:-64]  # a listener further behind gets the full fleet again
                async with self._changed:
                    self._version += 1
                    self._changed.notify_all()
            await asyncio.sleep(self.interval_s)
        self._task = None

    async def stream(self) -> AsyncIterator[str]:
        self._listeners += 1
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        seen = -1
        try:
            yield "retry: 2000\n\n"
            while True:
                if self._version != seen and self._version > 0:
                    behind = self._version - seen
                    if seen < 0 or behind > len(self._deltas):
                        yield f"event: fleet\ndata: {self.full_text()}\n\n"
                    else:
                        for text in self._deltas[-behind:]:
                            yield f"event: fleet-delta\ndata: {text}\n\n"
                    seen = self._version
                    continue
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), HEARTBEAT_S)
                if self._version == seen:
                    yield ": heartbeat\n\n"
        finally:
            self._listeners -= 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
