"""Drain the device's SQLite outbox to the cloud, end to end.

An entry leaves the outbox only when a ``ResultsAck`` naming its id arrives:
a broker's PUBACK only means the broker has the message. Entries are sent in
``Results`` messages of up to ``batch_size`` results (QoS 1), at most
``max_inflight_messages`` unacknowledged messages at a time; an entry with no
ack after ``ack_timeout_s`` is sent again (the cloud stores by result id, so a
re-send is harmless). ``last_sent`` lives in the outbox row, so a restarted
agent resumes where the killed one stopped.

The outbox is bounded where its rows are written (``Storage.record_result``,
in the result's own transaction, whichever role records it): over
``outbox_max_rows`` the oldest or the newest entries are given up
(``on_full``) and counted in the ``outbox_dropped`` counter. The results
themselves stay in ``results``. ``enforce_limit`` applies a bound changed at
run time.

With the disk full (0 bytes free, SQLITE_FULL) neither the ``last_sent`` mark nor the delete of an
acknowledged entry can be written. Entries are then sent without the mark (this process keeps
what is in flight in memory; a restart only re-sends, which is harmless), and acknowledged ones are
remembered (``_undeleted``, never sent again) and deleted once space returns.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from edge_agent.storage import OUTBOX_DROPPED, OUTBOX_ROWS, DiskFull, OutboxBound, Storage, envelope
from edge_agent.sync.protocol import ProtocolError, ResultRecord, Results, encode
from edge_agent.sync.settings import SyncConfig

logger = logging.getLogger(__name__)

DROPPED = OUTBOX_DROPPED  # counters: entries given up by the on-full policy
UNSENDABLE = "outbox_unsendable"  # entries that can never be sent (corrupt, or alone over the size limit)
DELIVERED = "outbox_delivered"  # entries acknowledged by the cloud
REJECTED = "outbox_rejected"  # entries the cloud says it will never store (ResultsAck.rejected)
CLOCK_SKEW_S = 60.0  # last_sent further in the future than this: the clock went back, send again
_SQL_VARS = 500


@dataclass(slots=True)
class _Inflight:
    ids: set[str]
    deadline: float


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    id: str
    record: ResultRecord


def _chunks(items: Sequence[str], n: int = _SQL_VARS) -> Iterable[Sequence[str]]:
    return (items[i : i + n] for i in range(0, len(items), n))


def _delete_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> int:
    """Delete the entries of these result ids: found through the results' id index (an entry's
    seq is its result's rowid; the outbox has no index on id), and among the entries of older
    agents whose result is gone (seq below zero)."""
    marks = ",".join("?" * len(ids))
    n = conn.execute(
        f"DELETE FROM outbox WHERE seq IN (SELECT rowid FROM results WHERE id IN ({marks}))", ids
    )
    old = conn.execute(f"DELETE FROM outbox WHERE seq < 0 AND id IN ({marks})", ids)
    return int(n.rowcount) + int(old.rowcount)


class Outbox:
    def __init__(
        self,
        storage: Storage,
        device: str,
        send: Callable[[bytes], None],
        settings: SyncConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.device = device
        self.settings = settings
        self._send = send
        self._clock = clock
        self._inflight: dict[str, _Inflight] = {}
        self._batch_of: dict[str, str] = {}
        self._undeleted: dict[str, bool] = {}  # acked (True) or refused (False), not deletable yet
        self._full = False  # the last write found the disk full (logged once per spell)
        self.delivered = 0  # acknowledged by the cloud since this process started
        self.sent = 0  # results sent (re-sends included) since this process started

    # -- reading -----------------------------------------------------------------
    def depth(self) -> int:
        return self.storage.outbox_depth()

    def oldest_age_s(self) -> float:
        row = self.storage.conn.execute("SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return max(0.0, self._clock() - float(row[0])) if row else 0.0

    def recorded_total(self) -> int:
        """Results ever recorded (their highest rowid; an entry's seq is its result's rowid)."""
        row = self.storage.conn.execute("SELECT MAX(rowid) FROM results").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @property
    def inflight_messages(self) -> int:
        return len(self._inflight)

    # -- sending -------------------------------------------------------------------
    def send_due(self) -> int:
        """Send new and timed-out entries while the window has room; the number of results sent."""
        self._expire()
        if self._undeleted:  # acknowledged while the disk was full: delete them now if it can
            pending, self._undeleted = self._undeleted, {}
            self.acknowledge(
                [i for i, ok in pending.items() if ok], [i for i, ok in pending.items() if not ok]
            )
        room = self.settings.max_inflight_messages - len(self._inflight)
        if room <= 0:
            return 0
        rows = self._claim(room * self.settings.batch_size)
        if not rows:
            return 0
        size = self.settings.batch_size
        count = 0
        for i in range(0, len(rows), size):
            for part in self._encode(rows[i : i + size]):
                batch_id, payload, ids = part
                self._send(payload)
                self._inflight[batch_id] = _Inflight(set(ids), time.monotonic() + self.settings.ack_timeout_s)
                for rid in ids:
                    self._batch_of[rid] = batch_id
                count += len(ids)
        self.sent += count
        return count

    def _claim(self, limit: int) -> list[_Row]:
        """Due entries, oldest first, marked as sent now (a crash after this only delays them).

        This process is the outbox's only sender, so reading before the write transaction is safe."""
        now = self._clock()
        found = self.storage.conn.execute(
            f"{OUTBOX_ROWS} WHERE o.kind = 'result' "
            "AND (o.last_sent IS NULL OR o.last_sent <= ? OR o.last_sent > ?) ORDER BY o.seq LIMIT ?",
            # unmarked entries (disk full) in flight or delivered come back here: read past them
            (
                now - self.settings.ack_timeout_s,
                now + CLOCK_SKEW_S,
                limit + len(self._batch_of) + len(self._undeleted),
            ),
        ).fetchall()
        rows: list[_Row] = []
        bad: list[tuple[int, str, str]] = []
        for row in found:
            seq, rid = row[0], row[1]
            if rid in self._batch_of or rid in self._undeleted:  # in flight, or delivered already
                continue
            if len(rows) + len(bad) >= limit:
                break
            try:
                doc = envelope(row)
                if doc is None:
                    bad.append((seq, rid, "its result is no longer on the device"))
                    continue
                rows.append(_Row(seq, rid, ResultRecord.model_validate(doc)))
            except ValidationError as exc:
                bad.append((seq, rid, f"corrupt envelope: {exc.errors()[0]['msg']}"))
            except ValueError as exc:  # not JSON
                bad.append((seq, rid, f"corrupt envelope: {exc}"))
        if not rows and not bad:
            return []
        try:
            with self.storage.transaction() as conn:
                conn.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, last_sent = ? WHERE seq = ?",
                    [(now, r.seq) for r in rows],
                )
                self._give_up(conn, bad)
        except DiskFull as exc:  # sent unmarked (module docstring); the bad ones are given up later
            self._note_full(exc)
            return rows
        self._note_full(None)
        return rows

    def _note_full(self, exc: DiskFull | None) -> None:
        if exc is not None and not self._full:
            logger.warning(
                "outbox: the disk is full; results are still sent, acknowledged ones stay in the "
                "outbox until space returns (%s)",
                exc.message,
            )
        elif exc is None and self._full:  # (at 0 bytes a write that fits in the WAL's blocks can pass)
            logger.info("outbox: writes pass again")
        self._full = exc is not None

    def _encode(self, rows: list[_Row]) -> list[tuple[str, bytes, list[str]]]:
        """One message, or halves of it while it is over the payload limit."""
        batch_id = uuid.uuid4().hex
        msg = Results(device=self.device, batch=batch_id, results=[r.record for r in rows])
        try:
            return [(batch_id, encode(msg), [r.id for r in rows])]
        except ProtocolError as exc:
            if len(rows) == 1:
                with self.storage.transaction() as conn:
                    self._give_up(conn, [(rows[0].seq, rows[0].id, exc.message)])
                return []
        half = len(rows) // 2
        return self._encode(rows[:half]) + self._encode(rows[half:])

    def _give_up(self, conn: sqlite3.Connection, bad: list[tuple[int, str, str]]) -> None:
        if not bad:
            return
        for _, rid, reason in bad:
            logger.error("outbox entry %s can never be sent (%s); removed from the outbox", rid, reason)
        conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _ in bad])
        self.storage.bump(conn, UNSENDABLE, len(bad))

    def _expire(self) -> None:
        now = time.monotonic()
        for batch_id in [b for b, f in self._inflight.items() if f.deadline <= now]:
            for rid in self._inflight.pop(batch_id).ids:
                self._batch_of.pop(rid, None)

    def reset_window(self, resend_now: bool) -> None:
        """Forget what is in flight; ``resend_now`` also makes every unacknowledged entry due at once
        (the broker lost our session, so acks that were on their way are gone)."""
        self._inflight.clear()
        self._batch_of.clear()
        if resend_now:
            with self.storage.transaction() as conn:
                conn.execute("UPDATE outbox SET last_sent = NULL WHERE last_sent IS NOT NULL")

    # -- acknowledgements ------------------------------------------------------------
    def acknowledge(self, ids: Sequence[str], rejected: Sequence[str] = ()) -> int:
        """Remove entries the cloud stored (``ids``) or will never store (``rejected``, counted and
        logged); the number removed. Ids not in the outbox are ignored."""
        removed = refused = 0
        try:
            removed, refused = self._delete(ids, rejected)
        except DiskFull as exc:  # remembered, never sent again, deleted once space returns
            self._note_full(exc)
            self._undeleted.update(dict.fromkeys(ids, True))
            self._undeleted.update(dict.fromkeys(rejected, False))
        if refused:
            logger.warning(
                "the cloud refused %d results for good (e.g. %s); not sent again", refused, rejected[0]
            )
        for rid in [*ids, *rejected]:
            batch_id = self._batch_of.pop(rid, None)
            if batch_id is not None and batch_id in self._inflight:
                flight = self._inflight[batch_id]
                flight.ids.discard(rid)
                if not flight.ids:
                    del self._inflight[batch_id]
        self.delivered += removed
        return removed

    def _delete(self, ids: Sequence[str], rejected: Sequence[str]) -> tuple[int, int]:
        removed = refused = 0
        with self.storage.transaction() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                removed += _delete_ids(conn, chunk)
            for chunk in _chunks(list(dict.fromkeys(rejected))):
                refused += _delete_ids(conn, chunk)
            if removed:
                self.storage.bump(conn, DELIVERED, removed)
            if refused:
                self.storage.bump(conn, REJECTED, refused)
        return removed, refused

    # -- bound -------------------------------------------------------------------------
    def enforce_limit(self) -> int:
        """Trim the outbox to ``outbox_max_rows`` by the ``on_full`` policy; the number dropped.

        ``Storage.record_result`` already holds the bound as rows are written; this catches a
        bound lowered at run time (``set_config``) or rows written by an older agent."""
        bound = OutboxBound(self.settings.outbox_max_rows, self.settings.on_full)
        lo, hi = self.storage.conn.execute("SELECT MIN(seq), MAX(seq) FROM outbox").fetchone()
        if lo is None or hi - lo + 1 <= bound.max_rows:  # cheap read first: no write lock taken
            return 0
        with self.storage.transaction(what="trimming the outbox") as conn:
            return self.storage.bound_outbox(conn, bound)
