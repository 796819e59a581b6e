"""Reads and writes of the control plane (both backends): on-device benchmark figures,
dashboard sessions ended by a logout, counters of signed update metadata, staged rollouts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cloud_sync.errors import NotFound
from cloud_sync.store.base import StoreBase
from cloud_sync.store.pages import dumps


class ControlPlane(StoreBase):
    # -- on-device benchmarks (written by record_reported) ---------------------------------
    def bench(self, device: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """The latest on-device benchmark of each (device, model), filtered."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("device", device), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT device, model, version, ts, received, figures, time_flag, device_ts FROM model_bench"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY model, device"
        return self._query(sql, params)

    def bench_updated(self) -> float | None:
        """When the newest benchmark figures arrived (the dashboard reloads them when it moves)."""
        value = self._scalar("SELECT max(received) FROM model_bench")
        return None if value is None else float(value)

    # -- dashboard sessions ----------------------------------------------------------------
    def revoke_session(self, nonce: str, expires: float) -> None:
        """End a session for good (a logout); rows past their expiry are dropped on the way."""
        with self.transaction() as db:
            db.execute("DELETE FROM revoked_sessions WHERE expires < ?", [time.time()])
            db.execute(
                "INSERT INTO revoked_sessions (nonce, expires) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING",
                [nonce, expires],
            )

    def session_revoked(self, nonce: str) -> bool:
        return self._scalar("SELECT 1 FROM revoked_sessions WHERE nonce = ?", [nonce]) is not None

    # -- signed update metadata counters ---------------------------------------------------
    def next_counter(self, name: str) -> int:
        """Increment and return counter ``name`` (1 the first time); atomic across processes
        (the row's write lock on PostgreSQL, the database's on SQLite)."""
        with self.transaction() as db:
            row = db.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
                [name],
            ).fetchone()
        return int(row[0])

    # -- staged rollouts (cloud_sync.rollout) ----------------------------------------------
    def save_rollout(self, rollout_id: str, state: str, doc: dict[str, Any], now: float) -> None:
        text = dumps(doc, "rollout")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rollouts (id, created, updated, state, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET updated = excluded.updated, state = excluded.state, "
                "doc = excluded.doc",
                [rollout_id, now, now, state, text],
            )

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM rollouts WHERE id = ?", [rollout_id])
        if not rows:
            raise NotFound(f"no rollout {rollout_id!r}")
        return rows[0]

    def rollouts(self, states: Sequence[str] | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if states:
            marks = ", ".join("?" for _ in states)
            return self._query(
                f"SELECT * FROM rollouts WHERE state IN ({marks}) ORDER BY created DESC LIMIT ?",
                [*states, limit],
            )
        return self._query("SELECT * FROM rollouts ORDER BY created DESC LIMIT ?", [limit])
