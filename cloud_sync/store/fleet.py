"""Reading the fleet: devices (paged by id), results (filtered, cursor-paged), telemetry, and
the fleet summary computed by the database (counts, outbox depth, versions), never by Python
over every row. The few dialect differences (reading a JSON field) are in :data:`JSON_SQL`.
"""

from __future__ import annotations

import math
from typing import Any

from cloud_sync.errors import InvalidRequest, NotFound
from cloud_sync.store.base import StoreBase
from cloud_sync.store.pages import Page, ResultQuery, decode_cursor, encode_cursor

# A number from a JSON text column; (key, value) rows of a JSON object column.
JSON_SQL = {
    "sqlite": {
        "number": "CAST(json_extract({col}, '$.{key}') AS REAL)",
        "each": "json_each({col})",
        "each_key": "key",
        "each_value": "value",
    },
    "postgresql": {
        "number": "CAST(({col}::jsonb ->> '{key}') AS DOUBLE PRECISION)",
        "each": "jsonb_each_text({col}::jsonb)",
        "each_key": "key",
        "each_value": "value",
    },
}
# The newest telemetry of each device: one backward seek on the primary key (device, ts) per
# device, never a pass over the whole telemetry table (which grows by every report of every device).
LATEST_TELEMETRY = (
    "SELECT d.id AS device, (SELECT t.metrics FROM telemetry t WHERE t.device = d.id "
    "ORDER BY t.ts DESC LIMIT 1) AS metrics FROM devices d"
)
DEVICE_PAGE_MAX = 1000


class FleetReads(StoreBase):
    def _json(self, what: str, **names: str) -> str:
        return JSON_SQL[self.dialect][what].format(**names)

    # -- devices ---------------------------------------------------------------------------
    def devices(self, online: bool | None = None) -> list[dict[str, Any]]:
        if online is None:
            return self._query("SELECT * FROM devices ORDER BY id")
        return self._query("SELECT * FROM devices WHERE online = ? ORDER BY id", [int(online)])

    @staticmethod
    def device_page_sql(
        online: bool | None = None, after: str | None = None, limit: int = 100, prefix: str | None = None
    ) -> tuple[str, list[Any]]:
        if not 1 <= limit <= DEVICE_PAGE_MAX:
            raise InvalidRequest(f"limit must be 1..{DEVICE_PAGE_MAX}")
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        if after is not None:
            where.append("id > ?")
            params.append(after)
        if prefix:
            # a range on the primary key (no LIKE: it would not use the index on both databases)
            where.append("id >= ? AND id < ?")
            params.extend([prefix, prefix + "\U0010ffff"])
        return f"SELECT * FROM devices WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", [*params, limit + 1]

    def device_page(
        self,
        online: bool | None = None,
        after: str | None = None,
        limit: int = 100,
        prefix: str | None = None,
    ) -> Page:
        """Devices in id order, ``limit`` at a time from after the id ``after`` (the cursor)."""
        rows = self._query(*self.device_page_sql(online, after, limit, prefix))
        items = rows[:limit]
        return Page(items, items[-1]["id"] if len(rows) > limit else None)

    def devices_seen_since(self, since: float) -> list[dict[str, Any]]:
        """Devices that sent anything at or after ``since`` (index on last_seen)."""
        return self._query("SELECT * FROM devices WHERE last_seen >= ? ORDER BY id", [since])

    def device(self, device_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM devices WHERE id = ?", [device_id])
        if not rows:
            raise NotFound(f"no device {device_id!r}")
        return rows[0]

    def status_history(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._query(
            "SELECT state, agent_version, models, ts, received, time_flag, device_ts FROM status_history "
            "WHERE device = ? ORDER BY received DESC, id DESC LIMIT ?",
            [device_id, limit],
        )

    def fleet_summary(self) -> dict[str, Any]:
        """Online/offline/unknown counts, outbox depth (sum, max, devices reporting), agent and
        model versions with their device counts: each one aggregate query in the database, all in
        one snapshot."""
        with self.snapshot() as db:
            counts = db.execute(
                "SELECT count(*), sum(CASE WHEN online = 1 THEN 1 ELSE 0 END), "
                "sum(CASE WHEN online = 0 THEN 1 ELSE 0 END) FROM devices"
            ).fetchone()
            depth = self._json("number", col="t.metrics", key="outbox_depth")
            outbox = db.execute(
                f"SELECT count({depth}), coalesce(sum({depth}), 0), max({depth}) FROM ({LATEST_TELEMETRY}) t "
                "WHERE t.metrics IS NOT NULL"
            ).fetchone()
            agents = db.execute(
                "SELECT agent_version, count(*) FROM devices WHERE agent_version IS NOT NULL "
                "GROUP BY agent_version ORDER BY agent_version"
            ).fetchall()
            each = self._json("each", col="coalesce(d.reported_models, d.models)")
            models = db.execute(
                f"SELECT j.key, j.value, count(*) FROM devices d, {each} j "
                "WHERE coalesce(d.reported_models, d.models) IS NOT NULL "
                "GROUP BY j.key, j.value ORDER BY j.key, j.value"
            ).fetchall()
        total, online, offline = int(counts[0]), int(counts[1] or 0), int(counts[2] or 0)
        return {
            "devices": total,
            "online": online,
            "offline": offline,
            "unknown": total - online - offline,
            "outbox": {
                "devices_reporting": int(outbox[0]),
                "total": int(outbox[1] or 0),
                "max": None if outbox[2] is None else int(outbox[2]),
            },
            "agent_versions": {str(v): int(n) for v, n in agents},
            "model_versions": [{"model": m, "version": str(v), "devices": int(n)} for m, v, n in models],
        }

    # -- results and telemetry -----------------------------------------------------------------
    @staticmethod
    def results_sql(q: ResultQuery) -> tuple[str, list[Any]]:
        """The SQL and parameters of a results page (one page plus one row, to know if more follow)."""
        if q.cursor is not None and q.offset:
            raise InvalidRequest("page with either offset or cursor, not both")
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("device", q.device), ("model", q.model), ("label", q.label)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since is not None:
            where.append("created >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("created < ?")
            params.append(q.until)
        direction, cmp = ("DESC", "<") if q.newest_first else ("ASC", ">")
        if q.cursor is not None:
            where.append(f"(created, id) {cmp} (?, ?)")
            params.extend(decode_cursor(q.cursor))
        sql = (
            f"SELECT * FROM results WHERE {' AND '.join(where)} "
            f"ORDER BY created {direction}, id {direction} LIMIT ? OFFSET ?"
        )
        return sql, [*params, q.limit + 1, q.offset]

    def results(self, q: ResultQuery) -> Page:
        rows = self._query(*self.results_sql(q))
        items = rows[: q.limit]
        more = len(rows) > q.limit
        return Page(items, encode_cursor(items[-1]["created"], items[-1]["id"]) if more else None)

    def result(self, result_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM results WHERE id = ?", [result_id])
        if not rows:
            raise NotFound(f"no result {result_id!r}")
        return rows[0]

    def telemetry(
        self, device_id: str, since: float | None = None, until: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self._query(
            "SELECT ts, received, metrics, time_flag, device_ts FROM telemetry WHERE device = ? AND ts >= ? "
            "AND ts < ? "
            "ORDER BY ts DESC LIMIT ?",
            [device_id, -math.inf if since is None else since, math.inf if until is None else until, limit],
        )

    def latest_metrics(self, devices: list[str] | None = None) -> dict[str, str]:
        """The newest telemetry metrics (JSON text) of each device, or of the devices named."""
        sql, params = LATEST_TELEMETRY, []
        if devices is not None:
            if not devices:
                return {}
            sql += f" WHERE d.id IN ({','.join('?' * len(devices))})"
            params = list(devices)
        with self.reading() as db:
            return {d: m for d, m in db.execute(sql, params).fetchall() if m is not None}

    def recent_result_counts(self, since: float, devices: list[str] | None = None) -> dict[str, int]:
        """Results created since ``since``, per device (all devices, or those named)."""
        sql, params = "SELECT device, count(*) FROM results WHERE created >= ?", [since]
        if devices is not None:
            if not devices:
                return {}
            sql += f" AND device IN ({','.join('?' * len(devices))})"
            params.extend(devices)  # type: ignore[arg-type]
        with self.reading() as db:
            return {d: int(n) for d, n in db.execute(sql + " GROUP BY device", params).fetchall()}

    def newest_marks(self) -> tuple[str | None, float | None]:
        """The newest result's id and the newest deployment report time (what says 'changed')."""
        with self.reading() as db:
            newest = db.execute("SELECT id FROM results ORDER BY created DESC, id DESC LIMIT 1").fetchone()
            update = db.execute("SELECT max(received) FROM deployment_devices").fetchone()
        return (newest[0] if newest else None), (update[0] if update else None)
