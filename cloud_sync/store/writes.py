"""What the ingest role writes: devices' status, telemetry, results, command replies, reports.

Idempotent by key on both backends (``ON CONFLICT DO NOTHING``): a result is stored once per
id, status history once per (device, ts, state), telemetry once per (device, ts), a command
has one reply. The caller acknowledges only after the outermost transaction commits.

Every time a device stamps with its own clock follows one rule (``clocks.device_time``): an
implausible one (a Pi back in 1970 before NTP answers) is stored as the arrival time, flagged
(``time_flag``), the device's own kept beside it (``device_created`` / ``device_ts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_sync.errors import Rejected
from cloud_sync.store import clocks
from cloud_sync.store.backends import Conn
from cloud_sync.store.base import StoreBase
from cloud_sync.store.clocks import PLAUSIBLE_AFTER, PLAUSIBLE_AHEAD_S, device_time
from cloud_sync.store.pages import dumps, finite, result_label, text
from edge_agent.sync.protocol import ClockCorrection, CommandReply, ModelsReported, Results, Status, Telemetry

RESULT_COLUMNS = (
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
# The hot path of the ingest role: one prepared statement through executemany.
INSERT_RESULT = (
    f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(RESULT_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
# Results recorded before the device's clock was set, with where (``clocks.py``): rare.
PLACED_COLUMNS = (*RESULT_COLUMNS, "boot", "boot_s", "time_corrected")
INSERT_PLACED = (
    f"INSERT INTO results ({', '.join(PLACED_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(PLACED_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
TOUCH = (
    "INSERT INTO devices (id, first_seen, last_seen) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > devices.last_seen "
    "THEN excluded.last_seen ELSE devices.last_seen END"
)
# A device time before PLAUSIBLE_AFTER (2020-01-01) or more than PLAUSIBLE_AHEAD_S after the
# result was received is implausible: stored as received, flagged, the device's own time kept
# beside it (and corrected later if the device sends a ClockCorrection: clocks.py).


def result_time(created: float, received: float, clock: str | None) -> tuple[float, str | None, float | None]:
    """(created to store, time_flag, device_created) for a result's device time."""
    if clock == "unsynced" or not PLAUSIBLE_AFTER <= created <= received + PLAUSIBLE_AHEAD_S:
        return received, clock or "implausible", created
    return created, clock, None


class IngestWrites(StoreBase):
    @staticmethod
    def _touch(db: Conn, device: str, received: float) -> None:
        db.execute(TOUCH, [device, received, received])

    def touch_devices(self, seen: Mapping[str, float]) -> None:
        """Mark devices seen (device -> when), in id order: several ingest processes writing one
        PostgreSQL lock the device rows of their batches in the same order, so never in a cycle."""
        with self.transaction() as db:
            for device in sorted(seen):
                self._touch(db, device, seen[device])

    def record_status(self, msg: Status, received: float) -> None:
        """History row (once per device, ts, state); device state in arrival order (LWT included)."""
        ts, flag, device_ts = device_time(finite(msg.ts, "status ts"), received)
        text(msg.agent_version, "status agent_version")
        text(msg.group, "status group")
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            models = dumps(msg.models, "status models")
            # once per (device, ts, state), or per (device, device_ts, state) for an implausible
            # ts: a retained status seen again adds no row
            db.execute(
                "INSERT INTO status_history (device, state, agent_version, models, ts, received, "
                "time_flag, device_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [msg.device, msg.state, msg.agent_version, models, ts, received, flag, device_ts],
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
        ts, flag, device_ts = device_time(finite(msg.ts, "telemetry ts"), received)
        metrics = dumps(msg.metrics, "telemetry metrics")
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            db.execute(
                "INSERT INTO telemetry (device, ts, received, metrics, time_flag, device_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, ts) DO NOTHING",
                [msg.device, ts, received, metrics, flag, device_ts],
            )

    def record_results(self, msg: Results, received: float, ingest: str) -> tuple[list[str], list[str]]:
        """Store a batch; (ids this device has stored now or before, ids refused).

        A result whose id is already stored for another device is refused, not acknowledged;
        so is one holding a non-finite number.
        """
        with self.transaction():
            ids, refused = self.insert_results(msg, received, ingest)
            owners = self.result_owners(ids)
        refused.extend(i for i in ids if owners.get(i) != msg.device)
        return [i for i in ids if owners.get(i) == msg.device], refused

    def insert_results(self, msg: Results, received: float, ingest: str) -> tuple[list[str], list[str]]:
        """Insert a batch without reading anything back: (ids to check with ``result_owners``, ids
        refused now for a non-finite number). The ingest checks the owners of a whole transaction's
        results in one read (one round trip to PostgreSQL per batch, not per message)."""
        rows: list[tuple[Any, ...]] = []
        placed: list[tuple[Any, ...]] = []  # unsynced, with their boot: a correction can place them
        accepted: list[str] = []
        refused: list[str] = []  # for a non-finite number or a NUL character
        for r in msg.results:
            try:
                created, flag, device_created = result_time(
                    finite(r.created, f"result {r.id} created"), received, r.clock
                )
                body = dumps(r.body, f"result {r.id} body")
                label = result_label(r.body)
                for value in (r.id, msg.batch, r.source, r.ref, r.model, r.version, label):
                    text(value, f"result {r.id!r}")
            except Rejected:
                refused.append(r.id)
                continue
            head = (r.id, msg.device, msg.batch, r.source, r.ref, r.model, r.version, label, created)
            row = (*head, received, ingest, body, flag, device_created, r.seq)
            accepted.append(r.id)
            if flag == "unsynced" and r.boot is not None and r.boot_s is not None:
                placed.append((*row, r.boot, r.boot_s, None))
            else:
                rows.append(row)
        ids = list(dict.fromkeys(accepted))
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            if rows:
                db.executemany(INSERT_RESULT, rows)
            if placed:  # their correction may have arrived first
                db.executemany(INSERT_PLACED, clocks.correct_rows(db, msg.device, placed, PLACED_COLUMNS))
        return ids, refused

    def record_clock_correction(self, msg: ClockCorrection, received: float) -> int:
        """Keep a device's clock correction and correct the results it covers (``clocks.py``);
        how many were corrected now. ``Rejected`` (nothing changed) if its times are implausible."""
        clocks.check(msg, received)
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            return clocks.apply(db, msg, received)

    def result_owners(self, ids: list[str]) -> dict[str, str]:
        """The device each of these result ids is stored for (ids not stored are left out)."""
        owners: dict[str, str] = {}
        with self.reading() as db:
            for start in range(0, len(ids), 5000):  # under both databases' parameter limits
                chunk = ids[start : start + 5000]
                # by primary key only: a filter on device would let the planner scan its index
                marks = ",".join("?" * len(chunk))
                found = db.execute(f"SELECT id, device FROM results WHERE id IN ({marks})", chunk).fetchall()
                owners.update({rid: device for rid, device in found})
        return owners

    def record_reply(self, msg: CommandReply, received: float) -> None:
        """The first reply to a command is kept; a reply to an unknown command is rejected."""
        ts, flag, device_ts = device_time(finite(msg.ts, "reply ts"), received)
        with self.transaction() as db:
            found = db.query("SELECT device FROM commands WHERE id = ?", [msg.id])
            if not found:
                raise Rejected(f"reply to unknown command {msg.id!r}")
            if found[0]["device"] != msg.device:
                owner = found[0]["device"]
                raise Rejected(f"reply from {msg.device!r} to command {msg.id!r} sent to {owner!r}")
            self._touch(db, msg.device, received)
            result = None if msg.result is None else dumps(msg.result, "reply result")
            db.execute(
                "INSERT INTO command_replies (command_id, device, ok, result, error, ts, received, "
                "time_flag, device_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (command_id) DO NOTHING",
                [msg.id, msg.device, int(msg.ok), result, msg.error, ts, received, flag, device_ts],
            )
            db.execute("UPDATE commands SET state = 'replied' WHERE id = ?", [msg.id])

    def record_reported(self, msg: ModelsReported, received: float) -> None:
        ts = device_time(finite(msg.ts, "reported ts"), received)[0]
        update = msg.last_update
        models = dumps(msg.models, "reported models")
        last = None if update is None else dumps(update.model_dump(), "last_update")
        shadow = dumps({k: v.model_dump() for k, v in msg.shadow.items()}, "shadow")
        bench = [
            (
                model,
                fig.version,
                *device_time(finite(fig.ts, "bench ts"), received),
                dumps(fig.model_dump(mode="json"), "bench figures"),
            )
            for model, fig in (msg.bench or {}).items()
        ]
        with self.transaction() as db:
            self._touch(db, msg.device, received)
            db.execute(
                "UPDATE devices SET reported_models = ?, last_update = COALESCE(?, last_update), "
                "shadow = ?, reported_ts = ? WHERE id = ? AND (reported_ts IS NULL OR reported_ts <= ?)",
                [models, last, shadow, ts, msg.device, ts],
            )
            for model, version, bench_ts, flag, device_ts, figures in bench:
                db.execute(
                    "INSERT INTO model_bench (device, model, version, ts, received, figures, time_flag, "
                    "device_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, model) DO UPDATE SET "
                    "version = excluded.version, ts = excluded.ts, received = excluded.received, "
                    "figures = excluded.figures, time_flag = excluded.time_flag, "
                    "device_ts = excluded.device_ts WHERE excluded.ts >= model_bench.ts",
                    [msg.device, model, version, bench_ts, received, figures, flag, device_ts],
                )
            if update is not None:
                done = finite(update.ts, "last_update ts")
                done_ts, done_flag, done_device_ts = device_time(done, received)
                db.execute(
                    "INSERT INTO deployment_devices (deployment, device, model, version, state, reason, "
                    "progress, ts, received, time_flag, device_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (deployment, device) DO UPDATE SET model = excluded.model, "
                    "version = excluded.version, state = excluded.state, reason = excluded.reason, "
                    "progress = excluded.progress, ts = excluded.ts, received = excluded.received, "
                    "time_flag = excluded.time_flag, device_ts = excluded.device_ts "
                    "WHERE excluded.ts >= deployment_devices.ts",
                    [
                        update.deployment,
                        msg.device,
                        update.model,
                        update.version,
                        update.state,
                        update.reason,
                        update.progress,
                        done_ts,
                        received,
                        done_flag,
                        done_device_ts,
                    ],
                )
