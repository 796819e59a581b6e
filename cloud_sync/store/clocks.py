"""Device clock corrections: the real time of results a device delivered before its clock was set.

A Pi without a real-time clock marks results recorded before NTP answered (``clock:
"unsynced"``, with its ``boot`` and ``boot_s``, seconds since that boot); the cloud stores them
at their reception time, flagged, the device's own time kept in ``device_created``
(``writes.result_time``). Once the clock is trusted the device sends a ``ClockCorrection``: the
boot's start time (``boot_time``) for a seq range of that boot. Each flagged result of that
device and boot then gets ``created = boot_time + boot_s`` (for those of its range the same sum
the device computes, so both ends agree to the bit), ``time_flag = 'corrected'`` and
``time_corrected`` (when the cloud corrected it); ``device_created`` stays, so ``created -
device_created`` is by how much it moved.

One correction places every result of its boot: ``boot_s`` counts from the same boot start,
whatever spell of unsynced clock a result was recorded in. So a correction that never arrived
(the device sent it to a cloud older than this, the seq range was reused after retention, or it
was lost any other way) is made up for by any other correction of the same boot: the ones it
covered are corrected by the next one the cloud keeps. A result of a covered range is corrected
by its own correction when that arrives first; a later correction of its boot does not move a
result already corrected (two trusted readings of one boot's start differ by the NTP slew only).

Idempotent and order-independent: the correction is kept (once per device and id; a second copy
changes nothing, and the kept one is what is applied), and a flagged result of a boot with a kept
correction that arrives later (re-sent, or overtaken by the correction) is corrected as it is
stored: by the correction whose range holds its seq, else by the newest of its boot. Both writes
lock the device's row first (``touch``), so two ingest processes on one PostgreSQL cannot each
miss the other's uncommitted half. A result of a boot no correction covers (the device rebooted
before its clock was set) stays flagged ``unsynced``. A correction
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
# by the partial index idx_results_unsynced (device, boot, seq) WHERE time_flag = 'unsynced':
# every flagged result of the boot, its range and any other (see the module's doc)
CORRECT = (
    "UPDATE results SET created = boot_s + ?, time_flag = 'corrected', time_corrected = ? "
    "WHERE device = ? AND boot = ? AND time_flag = 'unsynced' AND boot_s IS NOT NULL AND boot_s <= ?"
)
KEPT = "SELECT boot, first_seq, last_seq, boot_time, ts FROM clock_corrections"


@dataclass(frozen=True, slots=True)
class Correction:
    boot: str
    first_seq: int
    last_seq: int
    boot_time: float
    ts: float

    def covers(self, seq: int | None) -> bool:
        return seq is not None and self.first_seq <= seq <= self.last_seq

    def time_of(self, boot_s: float | None, received: float) -> float | None:
        """The corrected time of a flagged result of this boot, if plausible."""
        if boot_s is None:
            return None
        when = self.boot_time + boot_s
        return when if when <= received + PLAUSIBLE_AHEAD_S else None


def placing(corrections: Sequence[Correction], boot: str | None, seq: int | None) -> Correction | None:
    """The correction that places a flagged result: its range's, else the newest of its boot."""
    mine = [c for c in corrections if c.boot == boot]
    covering = [c for c in mine if c.covers(seq)]
    if covering:
        return covering[0]
    return max(mine, key=lambda c: c.ts, default=None)


def report_time(ts: float, received: float) -> float:
    """The time a device's report (status, telemetry, a command reply, models/reported, its update
    outcome, benchmark figures) is stored and ordered by: the device's ``ts``, or when the cloud
    received it if that ``ts`` is not plausible. Reports are kept newest ``ts`` first, so a Pi back
    in 1970 after a reboot would otherwise have them ignored (or shown as its oldest) until NTP
    answers, and one in 2040 would hide every later one."""
    if received >= PLAUSIBLE_AFTER and not PLAUSIBLE_AFTER <= ts <= received + PLAUSIBLE_AHEAD_S:
        return received
    return ts


def device_time(ts: float, received: float) -> tuple[float, str | None, float | None]:
    """``(ts to store, time_flag, device_ts)`` of a report by the one rule of ``report_time``: an
    implausible ``ts`` is stored as the arrival time, flagged ``implausible``, the device's own
    kept in ``device_ts`` (as results keep theirs in ``device_created``)."""
    stored = report_time(ts, received)
    return (ts, None, None) if stored == ts else (stored, "implausible", ts)


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
    c = _correction(db.query(f"{KEPT} WHERE device = ? AND id = ?", [msg.device, msg.id])[0])
    limit = received + PLAUSIBLE_AHEAD_S - c.boot_time
    params = [c.boot_time, received, msg.device, c.boot, limit]
    return int(db.execute(CORRECT, params).rowcount)


def known(db: Conn, device: str, boots: Sequence[str]) -> list[Correction]:
    """The corrections kept for these boots of a device."""
    if not boots:
        return []
    marks = ",".join("?" * len(boots))
    found = db.query(f"{KEPT} WHERE device = ? AND boot IN ({marks})", [device, *boots])
    return [_correction(r) for r in found]


def _correction(row: dict[str, Any]) -> Correction:
    first, last = int(row["first_seq"]), int(row["last_seq"])
    return Correction(str(row["boot"]), first, last, float(row["boot_time"]), float(row["ts"]))


def correct_rows(
    db: Conn, device: str, rows: list[tuple[Any, ...]], columns: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Rows about to be stored (``columns``), flagged unsynced ones corrected by a correction
    already kept for their boot (it arrived first; ``placing``)."""
    at = {name: i for i, name in enumerate(columns)}
    flagged = {r[at["boot"]] for r in rows if r[at["time_flag"]] == "unsynced" and r[at["boot"]] is not None}
    corrections = known(db, device, sorted(flagged))
    if not corrections:
        return rows
    out: list[tuple[Any, ...]] = []
    for r in rows:
        row = list(r)
        c = placing(corrections, row[at["boot"]], row[at["seq"]])
        if row[at["time_flag"]] == "unsynced" and c is not None:
            when = c.time_of(row[at["boot_s"]], row[at["received"]])
            if when is not None:
                row[at["created"]], row[at["time_flag"]] = when, "corrected"
                row[at["time_corrected"]] = row[at["received"]]
        out.append(tuple(row))
    return out
