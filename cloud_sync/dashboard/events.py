"""The dashboard's live feed: one poller per app, fanned out as server-sent events.

The ingest role writes the database; the API process learns of changes by reading it. One
background task reads a fleet snapshot every ``interval_s`` (devices with their derived columns,
the newest result, the newest deployment report, the broker link) and, when it differs from the
last one, wakes every connected browser. Each browser gets the whole snapshot as ``event: fleet``
(a fleet of hundreds is a few tens of kilobytes), so a page that missed events is never out of date.
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


def fleet_snapshot(store: Store, broker_connected: bool, now: float | None = None) -> dict[str, Any]:
    """Every device with what the fleet page shows, plus the markers that say something changed."""
    now = time.time() if now is None else now
    recent = store.recent_result_counts(now - RESULTS_WINDOW_S)
    latest_metrics = {d: json.loads(m) for d, m in store.latest_metrics().items()}
    devices = []
    for d in store.devices():
        metrics = latest_metrics.get(d["id"], {})
        models = d.get("reported_models") or d.get("models") or {}
        devices.append(
            {
                "id": d["id"],
                "online": d["online"] if d["state"] is not None else None,
                "last_seen": d["last_seen"],
                "agent_version": d["agent_version"] or "",
                "models": models if isinstance(models, dict) else {},
                "outbox_depth": metrics.get("outbox_depth"),
                "rss_bytes": metrics.get("rss_bytes"),
                "results_last_hour": int(recent.get(d["id"], 0)),
            }
        )
    newest, update = store.newest_marks()
    return {
        "devices": devices,
        "broker_connected": broker_connected,
        "newest_result": newest,
        "deployment_update": update,
    }


class Feed:
    """Polls the store while at least one browser listens; ``stream()`` yields SSE frames."""

    def __init__(self, store: Store, link: MqttLink, interval_s: float = 1.0) -> None:
        self.store, self.link, self.interval_s = store, link, interval_s
        self._snapshot: dict[str, Any] | None = None
        self._text = ""
        self._version = 0
        self._changed = asyncio.Condition()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while self._listeners > 0:
            try:
                snapshot = await run_in_threadpool(fleet_snapshot, self.store, self.link.connected)
            except (CloudSyncError, OSError, ValueError) as exc:
                logger.warning("fleet feed: cannot read the store: %s", exc)
                snapshot = {"error": f"cannot read the cloud database: {exc}"}
            except Exception:  # one bad read must not end the feed for every browser
                logger.exception("fleet feed: unexpected error")
                snapshot = {"error": "internal error reading the fleet; see the API log"}
            comparable = {k: v for k, v in snapshot.items()}
            if comparable != self._snapshot:
                self._snapshot = comparable
                self._text = json.dumps(snapshot | {"ts": time.time()})
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
                if self._version != seen and self._text:
                    seen = self._version
                    yield f"event: fleet\ndata: {self._text}\n\n"
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
