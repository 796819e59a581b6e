"""Device clock corrections: the real time of results a device delivered before its clock was set.

A Pi without a real-time clock marks results recorded before NTP answered (``clock:
"unsynced"``, with its ``boot`` and ``boot_s``, seconds since that boot); the cloud stores them
at their reception time, flagged, the device's own time kept in ``device_created``
(``writes.result_time``). Once the clock is trusted the device sends a ``ClockCorrection``: the
boot's start time (``boot_time``) for a seq range of that boot. Each flagged result of that
device, boot and range then gets ``created = boot_time + boot_s`` (the same sum the device
computes, so both ends agree to the bit), ``time_flag = 'corrected'`` and ``time_corrected``
(when the cloud corrected it); ``device_created`` stays, so ``created - device_created`` is by how
much it moved.

Idempotent and order-independent: the correction is kept (once per device and id; a second copy
changes nothing, and the kept one is what is applied), and a flagged result of a covered boot
and range that arrives later (re-sent, or overtaken by the correction) is corrected as it is
stored. Both writes lock the device's row first (``touch``), so two ingest processes on one
PostgreSQL cannot each miss the other's uncommitted half. A result of a boot no correction
covers (the device rebooted before its clock was set) stays flagged ``unsynced``. A correction
whose times are not plausible is refused with the reason and changes nothing; a corrected time
that would not be plausible leaves that result flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud_sync.errors import Rejected
from cloud_sync.store.backends import Conn
from cloud_sync.store.pages import finite, text
from edge_agent.sync.protocol import ClockCorrection

# A device time before this (2020-01-01) or more than a day after it was received is implausible.
PLAUSIBLE_AFTER = 1_577_836_800.0
PLAUSIBLE_AHEAD_S = 86_400.0

KEEP = (
    "INSERT INTO clock_corrections (device, id, boot, first_seq, last_seq, count, boot_time, ts, received) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, id) DO NOTHING"
)
# by the partial index idx_results_unsynced (device, boot, seq) WHERE time_flag = 'unsynced'
CORRECT = (
    "UPDATE results SET created = boot_s + ?, time_flag = 'corrected', time_corrected = ? "
    "WHERE device = ? AND boot = ? AND seq >= ? AND seq <= ? AND time_flag = 'unsynced' "
    "AND boot_s IS NOT NULL AND boot_s <= ?"
)


@dataclass(frozen=True, slots=True)
class Correction:
    boot: str
    first_seq: int
    last_seq: int
    boot_time: float

    def time_of(
        self, boot: str | None, seq: int | None, boot_s: float | None, received: float
    ) -> float | None:
        """The corrected time of a flagged result, if this correction covers it plausibly."""
        if boot != self.boot or seq is None or boot_s is None:
            return None
        if not self.first_seq <= seq <= self.last_seq:
            return None
        when = self.boot_time + boot_s
        return when if when <= received + PLAUSIBLE_AHEAD_S else None


def report_time(ts: float, received: float) -> float:
    """The time a device's report (models/reported, its update outcome, benchmark figures) is
    ordered by: the device's ``ts``, or when the cloud received it if that ``ts`` is not
    plausible. Reports are kept newest ``ts`` first, so a Pi back in 1970 after a reboot would
    otherwise have them ignored until NTP answers (and one in 2040 would hide every later one)."""
    if received >= PLAUSIBLE_AFTER and not PLAUSIBLE_AFTER <= ts <= received + PLAUSIBLE_AHEAD_S:
        return received
    return ts


def check(msg: ClockCorrection, received: float) -> None:
    """Refuse (``Rejected``, with the reason) a correction that cannot be right."""
    ts, boot_time = finite(msg.ts, "clock correction ts"), finite(msg.boot_time, "clock correction boot_time")
    text(msg.id, "clock correction id")
    if not PLAUSIBLE_AFTER <= ts <= received + PLAUSIBLE_AHEAD_S:
        raise Rejected(
            f"clock correction {msg.id!r}: its ts {ts} is not a plausible time (before 2020 or more "
            "than a day after it was received): the device's clock is still not set"
        )
    if not PLAUSIBLE_AFTER <= boot_time <= ts:
        raise Rejected(
            f"clock correction {msg.id!r}: boot_time {boot_time} is not between 2020 and its ts {ts}"
        )


def apply(db: Conn, msg: ClockCorrection, received: float) -> int:
    """Keep the correction (once) and correct the flagged results it covers; how many. Call
    inside a transaction that has touched the device's row."""
    check(msg, received)
    keep = (msg.device, msg.id, msg.boot, msg.first_seq, msg.last_seq, msg.count, msg.boot_time, msg.ts)
    db.execute(KEEP, [*keep, received])
    c = _correction(
        db.query(
            "SELECT boot, first_seq, last_seq, boot_time FROM clock_corrections WHERE device = ? AND id = ?",
            [msg.device, msg.id],
        )[0]
    )
    limit = received + PLAUSIBLE_AHEAD_S - c.boot_time
    params = [c.boot_time, received, msg.device, c.boot, c.first_seq, c.last_seq, limit]
    return int(db.execute(CORRECT, params).rowcount)


def known(db: Conn, device: str, boots: Sequence[str]) -> list[Correction]:
    """The corrections kept for these boots of a device."""
    if not boots:
        return []
    marks = ",".join("?" * len(boots))
    found = db.query(
        "SELECT boot, first_seq, last_seq, boot_time FROM clock_corrections "
        f"WHERE device = ? AND boot IN ({marks})",
        [device, *boots],
    )
    return [_correction(r) for r in found]


def _correction(row: dict[str, Any]) -> Correction:
    return Correction(str(row["boot"]), int(row["first_seq"]), int(row["last_seq"]), float(row["boot_time"]))


def correct_rows(
    db: Conn, device: str, rows: list[tuple[Any, ...]], columns: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Rows about to be stored (``columns``), flagged unsynced ones corrected by a correction
    already kept for their boot (it arrived first)."""
    at = {name: i for i, name in enumerate(columns)}
    flagged = {r[at["boot"]] for r in rows if r[at["time_flag"]] == "unsynced" and r[at["boot"]] is not None}
    corrections = known(db, device, sorted(flagged))
    if not corrections:
        return rows
    out: list[tuple[Any, ...]] = []
    for r in rows:
        row = list(r)
        if row[at["time_flag"]] == "unsynced":
            for c in corrections:
                when = c.time_of(row[at["boot"]], row[at["seq"]], row[at["boot_s"]], row[at["received"]])
                if when is not None:
                    row[at["created"]], row[at["time_flag"]] = when, "corrected"
                    row[at["time_corrected"]] = row[at["received"]]
                    break
        out.append(tuple(row))
    return out
