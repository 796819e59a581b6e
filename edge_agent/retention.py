"""Retention: what the device may forget, and when.

After ``[storage] retention_days`` the device deletes

- results the cloud has acknowledged (no longer in the outbox), camera thumbnails with them
  (they live in the result's body);
- jobs and batch items that finished (``done`` or ``failed``).

A result still in the outbox is never deleted here, however old: only the outbox's own
on-full policy (``[sync] on_full``) gives up forwarding, and even then the result stays until
it is old. Queued and running work is never touched.

Deletes run in short transactions of ``CHUNK`` rows (other writers wait at most one of them),
from a background thread (``Pruner``) of the gateway role and of the sync role (a device may run
either without the other: camera + sync has no gateway), every ``interval`` seconds; two pruners
at once only find less to delete. While
the wall clock is not trusted (``clock.clock_trust``) nothing is pruned: ages computed from a
clock that may be years off mean nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.clock import ClockTrust, boot_id, clock_trust
from edge_agent.errors import EdgeAgentError
from edge_agent.storage import Storage

logger = logging.getLogger(__name__)

CHUNK = 500
DAY_S = 86_400.0
MAX_INTERVAL_S = 3600.0
CLOCK_CHECK_S = 5.0  # how soon after the clock is trusted result times are corrected
FIRST_PRUNE_S = 60.0  # the first pruning after a start: soon, but not in the start-up rush
CLOCK_CORRECTIONS = "clock_corrections"  # counter: corrections queued (the sync role reads it)

_STEPS: tuple[tuple[str, str], ...] = (
    (
        "results",
        "DELETE FROM results WHERE rowid IN (SELECT r.rowid FROM results r WHERE r.created < ? "
        "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = r.rowid) LIMIT ?)",
    ),
    (
        "jobs",
        # finished jobs were all claimed (indexed: lease_owner set); the newest row is kept so
        # rowids only grow: workers find jobs never claimed by rowid from a cursor (jobs.py)
        "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE status IN ('done', 'failed') "
        "AND lease_owner IS NOT NULL AND created < ?1 AND COALESCE(finished, created) < ?1 "
        "AND rowid < (SELECT MAX(rowid) FROM jobs) LIMIT ?2)",
    ),
    (
        "batch_items",
        "DELETE FROM batch_items WHERE rowid IN (SELECT rowid FROM batch_items "
        "WHERE status IN ('done', 'failed') AND created < ?1 AND COALESCE(finished, created) < ?1 LIMIT ?2)",
    ),
)


@dataclass(frozen=True, slots=True)
class Pruned:
    results: int = 0
    jobs: int = 0
    batch_items: int = 0

    @property
    def total(self) -> int:
        return self.results + self.jobs + self.batch_items


def prune(storage: Storage, max_age_s: float, now: float | None = None, chunk: int = CHUNK) -> Pruned:
    """Delete what is older than ``max_age_s`` by the rules above; the counts deleted."""
    cutoff = (time.time() if now is None else now) - max_age_s
    counts: dict[str, int] = {}
    for table, sql in _STEPS:
        total = 0
        while True:
            with storage.transaction(what=f"pruning old {table}") as conn:
                n = int(conn.execute(sql, (cutoff, chunk)).rowcount)
            total += n
            if n < chunk:
                break
        counts[table] = total
    return Pruned(**counts)


def correct_unsynced(storage: Storage, trust: ClockTrust) -> int:
    """Once the clock is trusted, give results recorded before (in this boot) their real time:
    the wall time of the moment they were recorded, from seconds-since-boot. Results of an
    earlier boot cannot be placed and stay marked ``unsynced``. The number corrected.

    In the same transaction the correction is queued in ``clock_corrections`` (one entry per boot
    and seq range; the sync role sends it as a ``ClockCorrection`` until acknowledged): the cloud
    corrects what was delivered before, and a power cut cannot separate the local correction from
    the message."""
    if not trust.trusted:
        return 0
    boot, boot_time = boot_id(), trust.wall - trust.boot_s
    # of this boot: results left unsynced by an earlier boot take no write lock every 5 s
    find = "SELECT 1 FROM results WHERE clock = 'unsynced' AND boot = ? LIMIT 1"
    if storage.conn.execute(find, (boot,)).fetchone() is None:
        return 0
    with storage.transaction(what="correcting result times") as conn:
        first, last = conn.execute(
            "SELECT MIN(rowid), MAX(rowid) FROM results WHERE clock = 'unsynced' AND boot = ?", (boot,)
        ).fetchone()
        n = conn.execute(
            "UPDATE results SET created = boot_s + ?, clock = 'corrected' "
            "WHERE clock = 'unsynced' AND boot = ?",
            (boot_time, boot),
        ).rowcount
        if n and boot != "unknown":  # without a boot id results of several boots cannot be told apart
            body = {"boot": boot, "first_seq": first, "last_seq": last, "count": n}
            body |= {"boot_time": boot_time, "ts": trust.wall}
            conn.execute(
                "INSERT OR IGNORE INTO clock_corrections (id, body, created) VALUES (?, ?, ?)",
                (f"clock:{first}:{boot}"[:64], json.dumps(body), trust.wall),
            )
            storage.bump(conn, CLOCK_CORRECTIONS)
    if n:
        logger.info("clock synchronised: corrected the time of %d results (seq %s..%s)", n, first, last)
    return int(n)


class Pruner:
    """On a daemon thread until ``stop()``: correct result times once the clock is trusted
    (checked every ``CLOCK_CHECK_S``), prune every ``interval_s`` (``max_age_s`` None: never)."""

    def __init__(
        self,
        storage: Storage,
        max_age_s: float | None,
        trust: Callable[[], ClockTrust] = clock_trust,
        interval_s: float | None = None,
    ) -> None:
        self.storage = storage
        self.max_age_s = max_age_s
        self.trust = trust
        self.interval_s = interval_s or min(MAX_INTERVAL_S, max(1.0, (max_age_s or MAX_INTERVAL_S) / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self.last: Pruned | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def run_once(self) -> Pruned | None:
        trust = self.trust()
        correct_unsynced(self.storage, trust)
        if self.max_age_s is None:
            return None
        if not trust.trusted:
            logger.info("retention: nothing pruned: %s", trust.reason)
            return None
        pruned = prune(self.storage, self.max_age_s)
        if pruned.total:
            logger.info(
                "retention: deleted %d results, %d jobs, %d batch items older than %.1f days",
                pruned.results,
                pruned.jobs,
                pruned.batch_items,
                self.max_age_s / DAY_S,
            )
        self.last = pruned
        return pruned

    def _loop(self) -> None:
        next_prune = time.monotonic() + min(self.interval_s, FIRST_PRUNE_S)
        try:
            while not self._stop.wait(min(CLOCK_CHECK_S, self.interval_s)):
                try:
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + self.interval_s
                        self.run_once()
                    else:
                        correct_unsynced(self.storage, self.trust())
                except EdgeAgentError as exc:  # a full or busy disk: try again next time
                    logger.warning("retention: %s", exc.message)
        finally:
            self.storage.close_connection()
