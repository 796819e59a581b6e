"""The cloud database: the only owner of its schema (SQLite through sqlite-utils).

One file in WAL mode, shared by every ingest role and the API. Each thread of
each process opens its own connection. Writes take the write lock up front
(``BEGIN IMMEDIATE``) so two ingest processes never deadlock on a lock
upgrade, and ``synchronous=FULL``: a result acknowledged to a device survives
a power cut, because the device deletes its copy on the ack.

Idempotence is in the schema: a result's primary key is its id (a redelivered
result is stored once), status history is unique per (device, ts, state),
telemetry per (device, ts), a command has at most one reply.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from cloud_sync.errors import InvalidRequest, NotFound, Rejected, SchemaTooNew, StoreError
from edge_agent.sqlitefile import SchemaTooNewError, UserVersion, connect, migrate
from edge_agent.sync.protocol import CommandReply, ModelsReported, Results, Status, Telemetry

BUSY_TIMEOUT_S = 10.0
UNFINISHED_STATES = frozenset({"pending", "downloading", "verifying"})
JSON_COLUMNS = frozenset(
    {
        "models",
        "reported_models",
        "last_update",
        "metrics",
        "body",
        "args",
        "result",
        "manifest",
        "devices",
        "figures",
        "shadow",
        "doc",
    }
)


# -- schema ------------------------------------------------------------------------------
# The hot path of the ingest role: one prepared INSERT OR IGNORE through executemany. sqlite-utils'
# insert_all re-reads the table's schema on every call, which cost ~1.5 ms per MQTT message here.
_RESULT_COLUMNS = (
    "id",
    "device",
    "batch",
    "source",
    "ref",
    "model",
    "version",
    "label",
    "created",
    "received",
    "ingest",
    "body",
    "time_flag",
    "device_created",
    "seq",
)
_INSERT_RESULT = (
    f"INSERT OR IGNORE INTO results ({', '.join(_RESULT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _RESULT_COLUMNS)})"
)


def _v1(db: Database) -> None:
    db.table("devices").create(
        {
            "id": str,
            "first_seen": float,
            "last_seen": float,
            "online": int,  # 1, 0, or NULL while no status has arrived
            "state": str,
            "agent_version": str,
            "models": str,
            "status_ts": float,
            "state_received": float,
            "reported_models": str,
            "last_update": str,
            "reported_ts": float,
        },
        pk="id",
        not_null=["first_seen", "last_seen"],
    )
    db.table("status_history").create(
        {
            "id": int,
            "device": str,
            "state": str,
            "agent_version": str,
            "models": str,
            "ts": float,
            "received": float,
        },
        pk="id",
        not_null=["device", "state", "ts", "received"],
        foreign_keys=[("device", "devices", "id")],
    )
    db.table("status_history").create_index(["device", "ts", "state"], unique=True)
    db.table("telemetry").create(
        {"device": str, "ts": float, "received": float, "metrics": str},
        pk=("device", "ts"),
        not_null=["received", "metrics"],
        foreign_keys=[("device", "devices", "id")],
    )
    db.table("results").create(
        {
            "id": str,
            "device": str,
            "batch": str,
            "source": str,
            "ref": str,
            "model": str,
            "version": str,
            "label": str,
            "created": float,
            "received": float,
            "ingest": str,
            "body": str,
        },
        pk="id",
        not_null=["device", "batch", "source", "model", "version", "created", "received", "body"],
        foreign_keys=[("device", "devices", "id")],
    )
    for columns in (["created", "id"], ["device", "created"], ["model", "created"], ["label", "created"]):
        db.table("results").create_index(columns)
    db.table("commands").create(
        {"id": str, "device": str, "name": str, "args": str, "created": float, "state": str, "error": str},
        pk="id",
        not_null=["device", "name", "args", "created", "state"],
        foreign_keys=[("device", "devices", "id")],
    )
    db.table("commands").create_index(["device", "created"])
    db.table("command_replies").create(
        {
            "command_id": str,
            "device": str,
            "ok": int,
            "result": str,
            "error": str,
            "ts": float,
            "received": float,
        },
        pk="command_id",
        not_null=["device", "ok", "ts", "received"],
        foreign_keys=[("command_id", "commands", "id")],
    )
    db.table("models").create({"name": str, "description": str, "created": float}, pk="name")
    db.table("model_versions").create(
        {
            "model": str,
            "version": str,
            "manifest": str,
            "sha256": str,
            "artifact_url": str,
            "signature": str,
            "key_id": str,
            "created": float,
        },
        pk=("model", "version"),
        not_null=["manifest", "sha256", "created"],
        foreign_keys=[("model", "models", "name")],
    )
    db.table("deployments").create(
        {"id": str, "created": float, "models": str, "devices": str, "state": str, "note": str},
        pk="id",
        not_null=["created", "models", "devices", "state"],
    )
    # no foreign key on deployment: a device may report on a deployment made elsewhere
    db.table("deployment_devices").create(
        {
            "deployment": str,
            "device": str,
            "model": str,
            "version": str,
            "state": str,
            "reason": str,
            "progress": float,
            "ts": float,
            "received": float,
        },
        pk=("deployment", "device"),
        not_null=["state", "ts", "received"],
        foreign_keys=[("device", "devices", "id")],
    )


def _v2(db: Database) -> None:
    """On-device benchmark figures: the latest per (device, model), as reported."""
    db.table("model_bench").create(
        {"device": str, "model": str, "version": str, "ts": float, "received": float, "figures": str},
        pk=("device", "model"),
        not_null=["version", "ts", "received", "figures"],
        foreign_keys=[("device", "devices", "id")],
    )


def _v3(db: Database) -> None:
    # dashboard sessions ended by a logout before they expire (cloud_sync/dashboard/auth.py)
    db.table("revoked_sessions").create({"nonce": str, "expires": float}, pk="nonce", not_null=["expires"])


def _v4(db: Database) -> None:
    """Device clocks: a Pi without a real-time clock may stamp results with 1970 (or any time)
    until NTP answers. ``time_flag`` says how far ``created`` can be believed, ``device_created``
    keeps what the device said when it was not stored as ``created``, ``seq`` is the device's
    result sequence (their order, whatever the clock)."""
    db.execute("ALTER TABLE results ADD COLUMN time_flag TEXT")
    db.execute("ALTER TABLE results ADD COLUMN device_created REAL")
    db.execute("ALTER TABLE results ADD COLUMN seq INTEGER")


def _v5(db: Database) -> None:
    """Signed update metadata counters, shadow figures, rollout groups and staged rollouts."""
    # counters of signed update metadata: "targets:<device>" (metadata version), "release:<model>"
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null=["value"])
    # the shadow figures a device last reported (model -> ShadowReport), for rollouts and the dashboard
    db.table("devices").add_column("shadow", str)
    db.table("devices").add_column("rollout_group", str)  # Status.group: waves by group
    # staged rollouts (cloud_sync.rollout): the plan and its progress as one JSON document
    db.table("rollouts").create(
        {"id": str, "created": float, "updated": float, "state": str, "doc": str},
        pk="id",
        not_null=["created", "updated", "state", "doc"],
    )


# Each migration moves the schema from version i to i + 1. Append only.
MIGRATIONS: tuple[Callable[[Database], None], ...] = (_v1, _v2, _v3, _v4, _v5)

# A device time before this (2020-01-01) or more than a day after the result was received is
# implausible: stored as received, flagged, the device's own time kept beside it.
PLAUSIBLE_AFTER = 1_577_836_800.0
PLAUSIBLE_AHEAD_S = 86_400.0


def result_time(created: float, received: float, clock: str | None) -> tuple[float, str | None, float | None]:
    """(created to store, time_flag, device_created) for a result's device time."""
    if clock == "unsynced" or not PLAUSIBLE_AFTER <= created <= received + PLAUSIBLE_AHEAD_S:
        return received, clock or "implausible", created
    return created, clock, None


# -- pages -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResultQuery:
    device: str | None = None
    model: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0
    cursor: str | None = None
    newest_first: bool = True


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created: float, result_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, result_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, result_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidRequest("invalid cursor: pass back the next_cursor of a previous page") from None
    if not isinstance(created, int | float) or not isinstance(result_id, str):
        raise InvalidRequest("invalid cursor: pass back the next_cursor of a previous page")
    return float(created), result_id


def result_label(body: dict[str, Any]) -> str | None:
    """The primary label of a result: ``body.label``, else that of its first prediction or box."""
    label = body.get("label")
    if isinstance(label, str):
        return label
    for key in ("predictions", "boxes"):
        items = body.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            first = items[0].get("label")
            if isinstance(first, str):
                return first
    return None


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise Rejected(f"{what} holds a non-finite number (NaN or Infinity)") from None
    except RecursionError:
        raise Rejected(f"{what} is nested too deeply") from None


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise Rejected(f"{what} is not a finite number")
    return value


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in row.items()}
    if "online" in out and out["online"] is not None:
        out["online"] = bool(out["online"])
    return out


# -- the store ---------------------------------------------------------------------------
class Store:
    """The cloud database. Thread-safe: one connection per thread."""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    @property
    def db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            try:
                conn = connect(self.path, busy_timeout_s=self.busy_timeout_s, check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from None
            db = Database(conn, execute_plugins=False)
            self._local.db = db
            with self._lock:
                self._connections.append(conn)
        return db

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction; nested use becomes a savepoint that rolls back on its own."""
        db = self.db
        nested = db.conn.in_transaction
        try:
            if nested:
                with db.atomic():
                    yield db
                return
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if not nested:
                db.rollback()
            raise StoreError(f"database error: {exc}") from None

    def _migrate(self) -> None:
        try:
            with self.transaction() as db:
                migrate(db, MIGRATIONS, UserVersion(db.conn))
        except SchemaTooNewError as exc:
            raise SchemaTooNew(
                f"{self.path} has schema version {exc.version}, newer than this cloud_sync knows "
                f"({exc.known}); upgrade cloud_sync"
            ) from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot migrate {self.path}: {exc}") from None

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [_decode_row(row) for row in self.db.query(sql, list(params))]
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from None

    def count(self, table: str) -> int:
        if table not in self.db.table_names():
            raise NotFound(f"no table {table!r}")
        return int(self.db.table(table).count)

    # -- ingest: device -> cloud ---------------------------------------------------------
    @staticmethod
    def _touch(db: Database, device: str, received: float) -> None:
        db.execute(
            "INSERT INTO devices (id, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            [device, received, received],
        )

    def record_status(self, msg: Status, received: float) -> None:
        """History row (once per device, ts, state); device state in arrival order (LWT included)."""
        ts = _finite(msg.ts, "status ts")
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            models = _dumps(msg.models, "status models")
            db.table("status_history").insert(
                {
                    "device": msg.device,
                    "state": msg.state,
                    "agent_version": msg.agent_version,
                    "models": models,
                    "ts": ts,
                    "received": received,
                },
                ignore=True,
            )
            # An offline Last Will is fixed at connect time, so its ts predates the birth that
            # follows it: order by arrival (the broker's order), not by the device's ts.
            newer = "AND (state_received IS NULL OR state_received <= ?)"
            if msg.state == "online":
                db.execute(
                    "UPDATE devices SET online = 1, state = ?, agent_version = ?, models = ?, "
                    f"rollout_group = ?, status_ts = ?, state_received = ? WHERE id = ? {newer}",
                    [msg.state, msg.agent_version, models, msg.group, ts, received, msg.device, received],
                )
            else:
                db.execute(
                    "UPDATE devices SET online = 0, state = ?, status_ts = ?, state_received = ? "
                    f"WHERE id = ? {newer}",
                    [msg.state, ts, received, msg.device, received],
                )

    def record_telemetry(self, msg: Telemetry, received: float) -> None:
        ts = _finite(msg.ts, "telemetry ts")
        metrics = _dumps(msg.metrics, "telemetry metrics")
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            db.table("telemetry").insert(
                {"device": msg.device, "ts": ts, "received": received, "metrics": metrics}, ignore=True
            )

    def record_results(self, msg: Results, received: float, ingest: str) -> tuple[list[str], list[str]]:
        """Store a batch; (ids this device has stored now or before, ids refused with a reason logged).

        A result whose id is already stored for another device is refused, not acknowledged.
        """
        rows: list[dict[str, Any]] = []
        refused: list[str] = []
        for r in msg.results:
            try:
                created, flag, device_created = result_time(
                    _finite(r.created, f"result {r.id} created"), received, r.clock
                )
                rows.append(
                    {
                        "id": r.id,
                        "device": msg.device,
                        "batch": msg.batch,
                        "source": r.source,
                        "ref": r.ref,
                        "model": r.model,
                        "version": r.version,
                        "label": result_label(r.body),
                        "created": created,
                        "received": received,
                        "ingest": ingest,
                        "body": _dumps(r.body, f"result {r.id} body"),
                        "time_flag": flag,
                        "device_created": device_created,
                        "seq": r.seq,
                    }
                )
            except Rejected:
                refused.append(r.id)
        ids = list(dict.fromkeys(row["id"] for row in rows))
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            if rows:
                db.conn.executemany(_INSERT_RESULT, rows)
            # by primary key only: a filter on device would let the planner scan the device's index
            marks = ",".join("?" * len(ids))
            found = db.execute(f"SELECT id, device FROM results WHERE id IN ({marks})", ids).fetchall()
            owned = {rid for rid, device in found if device == msg.device}
        refused.extend(i for i in ids if i not in owned)
        return [i for i in ids if i in owned], refused

    def record_reply(self, msg: CommandReply, received: float) -> None:
        """The first reply to a command is kept; a reply to an unknown command is rejected."""
        ts = _finite(msg.ts, "reply ts")
        with self.transaction() as db:
            found = list(db.query("SELECT device FROM commands WHERE id = ?", [msg.id]))
            if not found:
                raise Rejected(f"reply to unknown command {msg.id!r}")
            if found[0]["device"] != msg.device:
                owner = found[0]["device"]
                raise Rejected(f"reply from {msg.device!r} to command {msg.id!r} sent to {owner!r}")
            self._touch(db, msg.device, received)
            db.table("command_replies").insert(
                {
                    "command_id": msg.id,
                    "device": msg.device,
                    "ok": int(msg.ok),
                    "result": None if msg.result is None else _dumps(msg.result, "reply result"),
                    "error": msg.error,
                    "ts": ts,
                    "received": received,
                },
                ignore=True,
            )
            db.execute("UPDATE commands SET state = 'replied' WHERE id = ?", [msg.id])

    def record_reported(self, msg: ModelsReported, received: float) -> None:
        ts = _finite(msg.ts, "reported ts")
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            update = msg.last_update
            db.execute(
                "UPDATE devices SET reported_models = ?, last_update = COALESCE(?, last_update), "
                "shadow = ?, reported_ts = ? WHERE id = ? AND (reported_ts IS NULL OR reported_ts <= ?)",
                [
                    _dumps(msg.models, "reported models"),
                    None if update is None else _dumps(update.model_dump(), "last_update"),
                    _dumps({k: v.model_dump() for k, v in msg.shadow.items()}, "shadow"),
                    ts,
                    msg.device,
                    ts,
                ],
            )
            for model, fig in (msg.bench or {}).items():
                db.execute(
                    "INSERT INTO model_bench (device, model, version, ts, received, figures) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(device, model) DO UPDATE SET "
                    "version = excluded.version, ts = excluded.ts, received = excluded.received, "
                    "figures = excluded.figures WHERE excluded.ts >= model_bench.ts",
                    [
                        msg.device,
                        model,
                        fig.version,
                        _finite(fig.ts, "bench ts"),
                        received,
                        _dumps(fig.model_dump(mode="json"), "bench figures"),
                    ],
                )
            if update is not None:
                db.execute(
                    "INSERT INTO deployment_devices (deployment, device, model, version, state, reason, "
                    "progress, ts, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(deployment, device) DO UPDATE SET model = excluded.model, "
                    "version = excluded.version, state = excluded.state, reason = excluded.reason, "
                    "progress = excluded.progress, ts = excluded.ts, received = excluded.received "
                    "WHERE excluded.ts >= deployment_devices.ts",
                    [
                        update.deployment,
                        msg.device,
                        update.model,
                        update.version,
                        update.state,
                        update.reason,
                        update.progress,
                        _finite(update.ts, "last_update ts"),
                        received,
                    ],
                )

    def bench(self, device: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """The latest on-device benchmark of each (device, model), filtered."""
        where, params = [], []
        for column, value in (("device", device), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT device, model, version, ts, received, figures FROM model_bench"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY model, device"
        return self._query(sql, params)

    # -- devices, results, telemetry -----------------------------------------------------
    def devices(self, online: bool | None = None) -> list[dict[str, Any]]:
        if online is None:
            return self._query("SELECT * FROM devices ORDER BY id")
        return self._query("SELECT * FROM devices WHERE online = ? ORDER BY id", [int(online)])

    def device(self, device_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM devices WHERE id = ?", [device_id])
        if not rows:
            raise NotFound(f"no device {device_id!r}")
        return rows[0]

    def status_history(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._query(
            "SELECT state, agent_version, models, ts, received FROM status_history "
            "WHERE device = ? ORDER BY received DESC, id DESC LIMIT ?",
            [device_id, limit],
        )

    def results(self, q: ResultQuery) -> Page:
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
        rows = self._query(sql, [*params, q.limit + 1, q.offset])
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
            "SELECT ts, received, metrics FROM telemetry WHERE device = ? AND ts >= ? AND ts < ? "
            "ORDER BY ts DESC LIMIT ?",
            [device_id, -math.inf if since is None else since, math.inf if until is None else until, limit],
        )

    # -- commands --------------------------------------------------------------------------
    def add_command(
        self, command_id: str, device: str, name: str, args: dict[str, Any], created: float
    ) -> None:
        with self.transaction() as db:
            if not list(db.query("SELECT 1 FROM devices WHERE id = ?", [device])):
                raise NotFound(f"no device {device!r}: it has never sent anything to the cloud")
            db.table("commands").insert(
                {
                    "id": command_id,
                    "device": device,
                    "name": name,
                    "args": _dumps(args, "command args"),
                    "created": created,
                    "state": "pending",
                }
            )

    def mark_command(self, command_id: str, state: str, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE commands SET state = ?, error = ? WHERE id = ? AND state != 'replied'",
                [state, error, command_id],
            )

    def command(self, command_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM commands WHERE id = ?", [command_id])
        if not rows:
            raise NotFound(f"no command {command_id!r}")
        replies = self._query(
            "SELECT ok, result, error, ts, received FROM command_replies WHERE command_id = ?", [command_id]
        )
        reply = replies[0] if replies else None
        if reply is not None:
            reply["ok"] = bool(reply["ok"])
        return rows[0] | {"reply": reply}

    def commands(self, device: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if device is None:
            return self._query("SELECT * FROM commands ORDER BY created DESC LIMIT ?", [limit])
        return self._query(
            "SELECT * FROM commands WHERE device = ? ORDER BY created DESC LIMIT ?", [device, limit]
        )

    # -- dashboard sessions --------------------------------------------------------------
    def revoke_session(self, nonce: str, expires: float) -> None:
        """End a session for good (a logout); rows past their expiry are dropped on the way."""
        with self.transaction() as db:
            db.execute("DELETE FROM revoked_sessions WHERE expires < ?", [time.time()])
            db.execute(
                "INSERT OR IGNORE INTO revoked_sessions (nonce, expires) VALUES (?, ?)", [nonce, expires]
            )

    def session_revoked(self, nonce: str) -> bool:
        try:
            row = self.db.execute("SELECT 1 FROM revoked_sessions WHERE nonce = ?", [nonce]).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from None
        return row is not None

    # -- models and deployments (filled by the signed-update tooling) ---------------------
    def add_model_version(
        self,
        model: str,
        version: str,
        manifest: dict[str, Any],
        *,
        sha256: str,
        created: float,
        artifact_url: str | None = None,
        signature: str | None = None,
        key_id: str | None = None,
        description: str | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO models (name, description, created) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET description = coalesce(excluded.description, description)",
                [model, description, created],
            )
            db.table("model_versions").upsert(
                {
                    "model": model,
                    "version": version,
                    "manifest": _dumps(manifest, "manifest"),
                    "sha256": sha256,
                    "artifact_url": artifact_url,
                    "signature": signature,
                    "key_id": key_id,
                    "created": created,
                },
                pk=("model", "version"),
            )

    def models(self) -> list[dict[str, Any]]:
        return self._query(
            "SELECT m.name, m.description, m.created, count(v.version) AS versions "
            "FROM models m LEFT JOIN model_versions v ON v.model = m.name GROUP BY m.name ORDER BY m.name"
        )

    def model(self, name: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM models WHERE name = ?", [name])
        if not rows:
            raise NotFound(f"no model {name!r}")
        versions = self._query("SELECT * FROM model_versions WHERE model = ? ORDER BY created DESC", [name])
        return rows[0] | {"versions": versions}

    def model_version(self, model: str, version: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM model_versions WHERE model = ? AND version = ?", [model, version])
        if not rows:
            raise NotFound(f"no model version {model!r} {version!r}: publish it first")
        return rows[0]

    def next_counter(self, name: str) -> int:
        """Increment and return counter ``name`` (1 the first time); atomic across processes."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                [name],
            )
            return int(db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()[0])

    def save_rollout(self, rollout_id: str, state: str, doc: dict[str, Any], now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rollouts (id, created, updated, state, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated = excluded.updated, state = excluded.state, "
                "doc = excluded.doc",
                [rollout_id, now, now, state, _dumps(doc, "rollout")],
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

    def create_deployment(
        self,
        deployment_id: str,
        models: list[dict[str, str]],
        devices: list[str],
        created: float,
        note: str | None = None,
    ) -> None:
        with self.transaction() as db:
            for m in models:
                if not list(
                    db.query(
                        "SELECT 1 FROM model_versions WHERE model = ? AND version = ?",
                        [m.get("model"), m.get("version")],
                    )
                ):
                    raise NotFound(f"no model version {m.get('model')!r} {m.get('version')!r}")
            db.table("deployments").insert(
                {
                    "id": deployment_id,
                    "created": created,
                    "models": _dumps(models, "deployment models"),
                    "devices": _dumps(devices, "deployment devices"),
                    "state": "active",
                    "note": note,
                }
            )

    def deployments(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM deployments ORDER BY created DESC LIMIT ?", [limit])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM deployments WHERE id = ?", [deployment_id])
        devices = self._query(
            "SELECT device, model, version, state, reason, progress, ts, received FROM deployment_devices "
            "WHERE deployment = ? ORDER BY device",
            [deployment_id],
        )
        if not rows and not devices:
            raise NotFound(f"no deployment {deployment_id!r}")
        base = rows[0] if rows else {"id": deployment_id, "state": "unknown"}
        return base | {"device_states": devices}

    def deployment_status(self, deployment_id: str) -> dict[str, Any]:
        """A deployment with one entry per device: its last reported state, or ``pending`` (nothing
        reported yet) or ``superseded`` (unfinished here, and a newer deployment targets the device)."""
        rows = self._query("SELECT * FROM deployments WHERE id = ?", [deployment_id])
        if not rows:
            raise NotFound(f"no deployment {deployment_id!r}")
        dep = rows[0]
        reported = {
            r["device"]: r
            for r in self._query(
                "SELECT device, model, version, state, reason, progress, received FROM deployment_devices "
                "WHERE deployment = ?",
                [deployment_id],
            )
        }
        newer = {
            r["device"]: r["deployment"]
            for r in self._query(
                "SELECT j.value AS device, d.id AS deployment FROM deployments d, json_each(d.devices) j "
                "WHERE d.created > ? ORDER BY d.created",
                [dep["created"]],
            )
        }
        first = dep["models"][0] if dep["models"] else {}
        devices = []
        for device in sorted(set(dep["devices"]) | set(reported)):
            row = reported.get(device)
            state, reason = (row["state"], row["reason"]) if row else ("pending", None)
            if state in UNFINISHED_STATES and device in newer:
                state, reason = "superseded", f"deployment {newer[device]} replaced this one"
            devices.append(
                {
                    "device": device,
                    "state": state,
                    "version": row["version"] if row else first.get("version"),
                    "progress": row["progress"] if row else None,
                    "reason": reason,
                    "updated": row["received"] if row else None,
                }
            )
        summary: dict[str, int] = {}
        for d in devices:
            summary[d["state"]] = summary.get(d["state"], 0) + 1
        return {
            "id": dep["id"],
            "model": first.get("model"),
            "version": first.get("version"),
            "models": dep["models"],
            "created": dep["created"],
            "note": dep["note"],
            "devices": devices,
            "summary": summary,
        }
