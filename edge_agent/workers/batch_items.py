"""Batch items in the device database: register, list, claim with a lease, complete, fail.

An item is one sample for one model: a row of tensors (stored as JSON, one
sample without its batch dimension) or one encoded image (stored as sent).
Its life::

    pending --claim--> running --complete--> done      (result + outbox entry, one transaction)
       ^                  |    --fail-------> failed    (error kept; or back to pending to retry)
       +---- lease expired, or its process is gone ----+

Exactly once: completing is a conditional update on the lease owner in the
same transaction as ``Storage.record_result``, and the result id *is* the
item id, so a second result for an item cannot exist even in principle.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import orjson

from edge_agent.errors import EdgeAgentError, InvalidInput
from edge_agent.storage import NotFound, Storage, StorageError, new_id, now, unpack_body

PayloadKind = Literal["tensors", "images"]
STATUSES = ("pending", "running", "done", "failed")
FILTERS: dict[str, tuple[str, ...]] = {
    **{s: (s,) for s in STATUSES},
    "predicted": ("done",),
    "unpredicted": ("pending", "running"),
}
SOURCE = "batch"
RUN_REQUESTS = "batch_run_requests"  # counters: POST /batch/run calls recorded
RUN_ANSWERED = "batch_run_answered"  # counters: the requests a run has started for
_ID_NAMESPACE = uuid.UUID("5f0c4c52-3b1e-4a55-9d0e-6b61a1c0ba7c")
logger = logging.getLogger(__name__)
_COLUMNS = (
    "b.id, b.model, b.payload_kind, b.status, b.attempts, b.created, b.finished, b.run_id, "
    "b.result_id, b.error, r.version, r.body"
)


# -- payloads ---------------------------------------------------------------------
def encode_rows(tensors: Mapping[str, np.ndarray]) -> list[bytes]:
    """Validated tensors of N rows -> N payloads, one sample each. JSON of the values' exact
    doubles: a float32 at the edge of its range reads back as the same float32, not beyond it."""
    n = next(iter(tensors.values())).shape[0]
    return [orjson.dumps({k: v[i].tolist() for k, v in tensors.items()}) for i in range(n)]


def decode_row(payload: bytes) -> dict[str, np.ndarray]:
    """One stored sample -> named arrays without the batch dimension."""
    try:
        doc = orjson.loads(payload)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        return {str(k): np.asarray(v) for k, v in doc.items()}
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"stored item payload is unreadable: {exc}") from None


class IdempotencyConflict(EdgeAgentError):
    status = 409
    code = "idempotency_conflict"


def idempotent_ids(key: str, n: int) -> list[str]:
    return [uuid.uuid5(_ID_NAMESPACE, f"{key}\n{i}").hex for i in range(n)]


# -- lease owners -----------------------------------------------------------------
_owner: tuple[int, str] | None = None


def owner_id() -> str:
    """``host:pid:nonce`` of this process; the nonce tells a restarted process from its predecessor."""
    global _owner  # noqa: PLW0603 (one identity per process, renewed after a fork)
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


def owner_is_dead(owner: str) -> bool:
    """True only when certain: the owner ran on this host and its process is gone."""
    host, _, rest = owner.partition(":")
    pid_text, _, _nonce = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host (or container): wait for its lease to expire
    pid = int(pid_text)
    if pid == os.getpid():
        return owner != owner_id()  # our pid, another nonce: the process before us
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- views and outcomes ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Item:
    id: str
    model: str
    kind: str
    status: str
    attempts: int
    created: float
    finished: float | None
    run_id: str | None
    result_id: str | None
    error: str | None
    version: str | None  # the model version that answered (done items)
    result: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Item:
        body = row["body"]
        return cls(
            row["id"],
            row["model"],
            row["payload_kind"],
            row["status"],
            row["attempts"],
            row["created"],
            row["finished"],
            row["run_id"],
            row["result_id"],
            row["error"],
            row["version"],
            unpack_body(body) if body is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    model: str
    kind: PayloadKind
    payload: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A prediction (``version`` + ``body``) or an ``error``; ``retry`` asks for another attempt."""

    item_id: str
    model: str
    version: str | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    retry: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.version is not None and self.body is not None


@dataclass(slots=True)
class Completed:
    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0  # the lease had passed to another process: its result counts, not ours


# -- the store ----------------------------------------------------------------------
def _where(statuses: Iterable[str] | None, model: str | None) -> tuple[str, list[Any]]:
    sql, args = " WHERE 1=1", []
    if statuses is not None:
        wanted = list(statuses)
        sql += f" AND b.status IN ({', '.join('?' * len(wanted))})"
        args += wanted
    if model is not None:
        sql += " AND b.model = ?"
        args.append(model)
    return sql, args


class BatchItems:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def register(
        self, model: str, items: Sequence[tuple[PayloadKind, bytes]], key: str | None = None
    ) -> tuple[list[str], bool]:
        """Store validated items, all or none; returns their ids (in order) and whether this was
        a replay. With an idempotency ``key`` the ids derive from it, so a client that retries a
        request it got no answer to stores its items once."""
        ids = [new_id() for _ in items] if key is None else idempotent_ids(key, len(items))
        rows = [(i, model, kind, payload) for i, (kind, payload) in zip(ids, items, strict=True)]
        t = now()
        self.storage.require_room("registering batch items")

        def store(conn: sqlite3.Connection) -> tuple[list[str], bool]:
            if key is not None:
                marks = ", ".join("?" * len(ids))
                stored = {
                    r[0]: (r[1], r[2], bytes(r[3]))
                    for r in conn.execute(
                        f"SELECT id, model, payload_kind, payload FROM batch_items WHERE id IN ({marks})", ids
                    )
                }
                if stored:
                    wanted = {
                        i: (model, kind, payload) for i, (kind, payload) in zip(ids, items, strict=True)
                    }
                    if stored != wanted:
                        raise IdempotencyConflict(
                            "Idempotency-Key was already used for other items; use a new key", key=key
                        )
                    return ids, True
            conn.executemany(
                "INSERT INTO batch_items (id, model, payload_kind, payload, status, created) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                [(*r, t) for r in rows],
            )
            return ids, False

        return self.storage.write(store, "registering batch items")

    def get(self, item_id: str) -> Item:
        row = self.storage.conn.execute(
            f"SELECT {_COLUMNS} FROM batch_items b LEFT JOIN results r ON r.id = b.result_id WHERE b.id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no batch item {item_id!r}", item=item_id)
        return Item.from_row(row)

    def list_items(
        self,
        *,
        statuses: Iterable[str] | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Item]:
        where, args = _where(statuses, model)
        sql = (
            f"SELECT {_COLUMNS} FROM batch_items b LEFT JOIN results r ON r.id = b.result_id{where} "
            "ORDER BY b.created, b.rowid LIMIT ? OFFSET ?"
        )
        return [Item.from_row(r) for r in self.storage.conn.execute(sql, [*args, limit, offset])]

    def count(self, *, statuses: Iterable[str] | None = None, model: str | None = None) -> int:
        where, args = _where(statuses, model)
        row = self.storage.conn.execute(f"SELECT COUNT(*) FROM batch_items b{where}", args).fetchone()
        return int(row[0])

    def counts(self, model: str | None = None) -> dict[str, int]:
        where, args = _where(None, model)
        rows = self.storage.conn.execute(
            f"SELECT b.status, COUNT(*) FROM batch_items b{where} GROUP BY b.status", args
        )
        return {s: 0 for s in STATUSES} | {r[0]: int(r[1]) for r in rows}

    # -- run requests (POST /batch/run): kept in the database, the doorbell is only a hint ------
    def request_run(self, conn: sqlite3.Connection) -> None:
        """Record a request for a run (inside the caller's transaction): a role that is starting or
        restarting when the doorbell rings still finds it."""
        self.storage.bump(conn, RUN_REQUESTS)

    def run_requested(self) -> bool:
        """Was a run requested since the last run started? (False, logged, when the database
        cannot be read now: the ring, the schedule or the next look still start the run.)"""
        try:
            return self.storage.counter(RUN_REQUESTS) > self.storage.counter(RUN_ANSWERED)
        except sqlite3.Error as exc:
            logger.warning("cannot read the batch run requests now: %s", exc)
            return False

    def answer_requests(self) -> None:
        """A run starts: the requests made so far are answered by it (one write, only when some
        are open: an idle scheduled run writes nothing)."""
        if not self.run_requested():
            return
        with self.storage.transaction(what="batch run request") as conn:
            self.storage.set_counter(conn, RUN_ANSWERED, self.storage.counter(RUN_REQUESTS))

    def pending_models(self) -> list[str]:
        rows = self.storage.conn.execute("SELECT DISTINCT model FROM batch_items WHERE status = 'pending'")
        return sorted(r[0] for r in rows)

    def release_abandoned(
        self, max_attempts: int, is_dead: Callable[[str], bool] = owner_is_dead, at: float | None = None
    ) -> int:
        """Running items whose lease expired, or whose process is gone, go back to pending
        (or to failed after ``max_attempts``: an item that keeps killing its process)."""
        t = now() if at is None else at
        with self.storage.transaction() as conn:
            owners = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT lease_owner FROM batch_items "
                    "WHERE status = 'running' AND lease_owner IS NOT NULL"
                )
            ]
            dead = [o for o in owners if is_dead(o)]
            marks = ", ".join("?" * len(dead)) or "NULL"
            cond = f"status = 'running' AND (lease_expires < ? OR lease_owner IN ({marks}))"
            conn.execute(
                "UPDATE batch_items SET status = 'failed', finished = ?, lease_owner = NULL, "
                "lease_expires = NULL, error = 'abandoned ' || attempts || ' times: the process "
                f"predicting it stopped' WHERE {cond} AND attempts >= ?",
                (t, t, *dead, max_attempts),
            )
            cur = conn.execute(
                "UPDATE batch_items SET status = 'pending', lease_owner = NULL, lease_expires = NULL "
                f"WHERE {cond}",
                (t, *dead),
            )
            return int(cur.rowcount)

    def give_back(self, owner: str) -> int:
        """Items leased to ``owner`` back to pending, their attempt not counted (the disk was full:
        not the items' fault); 0 if that write failed too (the leases then expire as usual)."""
        try:
            with self.storage.transaction(what="giving batch items back") as conn:
                cur = conn.execute(
                    "UPDATE batch_items SET status = 'pending', lease_owner = NULL, lease_expires = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE status = 'running' AND lease_owner = ?",
                    (owner,),
                )
                return int(cur.rowcount)
        except StorageError:
            return 0

    def claim(self, owner: str, run_id: str, limit: int, lease_s: float) -> list[Claimed]:
        """Lease up to ``limit`` pending items, oldest first, skipping those already tried in ``run_id``."""
        return self.exchange(owner, run_id, (), limit, lease_s, max_attempts=1)[1]

    def complete(self, owner: str, outcomes: Sequence[Outcome], max_attempts: int) -> Completed:
        """Record outcomes in one transaction; only items still leased to ``owner`` count."""
        return self.exchange(owner, "", outcomes, 0, 0.0, max_attempts)[0]

    def exchange(
        self,
        owner: str,
        run_id: str,
        outcomes: Sequence[Outcome],
        limit: int,
        lease_s: float,
        max_attempts: int,
    ) -> tuple[Completed, list[Claimed]]:
        """``complete`` and ``claim`` in one transaction: a chunk handed back, the next taken, one fsync."""
        with self.storage.transaction() as conn:
            done = self._complete(conn, owner, outcomes, max_attempts) if outcomes else Completed()
            claimed = self._claim(conn, owner, run_id, limit, lease_s) if limit > 0 else []
        return done, claimed

    @staticmethod
    def _claim(
        conn: sqlite3.Connection, owner: str, run_id: str, limit: int, lease_s: float
    ) -> list[Claimed]:
        rows = conn.execute(
            "UPDATE batch_items SET status = 'running', lease_owner = ?, lease_expires = ?, "
            "attempts = attempts + 1, run_id = ? WHERE id IN ("
            "  SELECT id FROM batch_items WHERE status = 'pending' AND (run_id IS NULL OR run_id != ?)"
            "  ORDER BY created, rowid LIMIT ?"
            ") RETURNING id, model, payload_kind, payload, attempts",
            (owner, now() + lease_s, run_id, run_id, limit),
        ).fetchall()
        return sorted(
            (Claimed(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows), key=lambda c: (c.model, c.kind)
        )

    def _complete(
        self, conn: sqlite3.Connection, owner: str, outcomes: Sequence[Outcome], max_attempts: int
    ) -> Completed:
        out = Completed()
        t = now()
        marks = ", ".join("?" * len(outcomes))
        owned: dict[str, int] = dict(
            conn.execute(
                f"SELECT id, attempts FROM batch_items WHERE id IN ({marks}) "
                "AND status = 'running' AND lease_owner = ?",
                [*(o.item_id for o in outcomes), owner],
            ).fetchall()
        )
        done = [o for o in outcomes if o.item_id in owned and o.ok]
        conn.executemany(
            "UPDATE batch_items SET status = 'done', finished = ?, result_id = id, error = NULL, "
            "lease_owner = NULL, lease_expires = NULL WHERE id = ?",
            [(t, o.item_id) for o in done],
        )
        for o in done:
            if o.version is None or o.body is None:  # (o.ok says they are not)
                continue
            try:
                self.storage.record_result(
                    conn,
                    source=SOURCE,
                    model=o.model,
                    version=o.version,
                    body=o.body,
                    ref=o.item_id,
                    result_id=o.item_id,
                )
            except sqlite3.IntegrityError:  # only if a row was reset by hand: the first result stays
                logger.warning("batch item %s already has a result; kept the first one", o.item_id)
        out.done = len(done)
        out.lost = sum(1 for o in outcomes if o.item_id not in owned)
        failures = []
        for o in outcomes:
            if o.item_id in owned and not o.ok:
                final = not o.retry or owned[o.item_id] >= max_attempts
                failures.append(("failed" if final else "pending", t if final else None, o.error, o.item_id))
                out.failed += final
                out.retried += not final
        conn.executemany(
            "UPDATE batch_items SET status = ?, finished = ?, error = ?, "
            "lease_owner = NULL, lease_expires = NULL WHERE id = ?",
            failures,
        )
        return out
