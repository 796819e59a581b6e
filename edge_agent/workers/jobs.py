"""The asynchronous job queue, over the ``jobs`` table of the device database.

Life of a job: ``queued`` -> ``running`` (claimed under a lease) -> ``done`` or
``failed``; a failed attempt goes back to ``queued`` until ``max_attempts``.

- **Atomic claim**: one ``BEGIN IMMEDIATE`` transaction picks the oldest
  claimable job and marks it running, so two workers never get the same job.
- **Lease**: a claim holds the job until ``lease_expires``. A worker that dies
  (``kill -9``, power cut) stops renewing nothing and simply never finishes;
  once the lease has passed, the next claim puts the job back in the queue (or
  fails it, when it has had all its attempts: a job that kills its worker
  every time must not loop for ever).
- **Exactly once**: a claim's lease token is ``<worker>#<attempt>``. Completion
  is ``UPDATE ... WHERE lease_owner = <token> AND status = 'running'`` in the
  same transaction as the result and its outbox entry, and the result's id is
  the job's id: a worker whose lease was taken over records nothing, and a
  second result for one job cannot exist.
- **Retry backoff**: a failed attempt is queued again with ``lease_expires``
  set to the earliest time it may run (the column means "nobody may take this
  job before"), so retries are spaced out and workers wait on that deadline.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.storage import NotFound, Storage, StorageError, now, unpack_body
from edge_agent.workers.doorbell import Doorbell

PayloadKind = Literal["tensors", "images"]
Status = Literal["queued", "running", "done", "failed"]

RETRY_BASE_S = 0.25  # first retry after 0.25 s, then 0.5, 1, ... capped at the lease
SOURCE_ASYNC = "async"
SOURCE_SYNC_ASYNC = "sync-async"


class JobNotFound(NotFound):
    code = "job_not_found"


# -- payloads: the request's tensors or image bytes, as one blob ---------------------------
# ``EJP1`` + header length (4 bytes, big-endian) + a JSON header listing each array's name,
# dtype and shape + the arrays' raw bytes in that order: a four-float input takes 70 bytes
# (an .npz took 290: zip headers), which is written twice per job on an SD card. Jobs queued
# by an older agent hold an .npz and are still read.
PAYLOAD_MAGIC = b"EJP1"


def _pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    parts = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = json.dumps(
        [[name, a.dtype.str, list(a.shape)] for name, a in parts.items()], separators=(",", ":")
    ).encode()
    return b"".join(
        [PAYLOAD_MAGIC, len(header).to_bytes(4, "big"), header, *(a.tobytes() for a in parts.values())]
    )


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    if not blob.startswith(PAYLOAD_MAGIC):  # an .npz written by an older agent
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    size = int.from_bytes(blob[4:8], "big")
    offset, out = 8 + size, {}
    for name, dtype, shape in json.loads(blob[8:offset]):
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"array {name!r} has an object dtype")
        n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + n > len(blob):
            raise ValueError("truncated payload")
        count = n // dt.itemsize if dt.itemsize else 0
        out[name] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += n
    return out


def pack_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    return _pack(tensors)


def pack_images(images: Sequence[bytes]) -> bytes:
    return _pack({f"image_{i:05d}": np.frombuffer(data, dtype=np.uint8) for i, data in enumerate(images)})


def unpack(kind: str, blob: bytes) -> tuple[dict[str, np.ndarray] | None, list[bytes] | None]:
    """(tensors, None) or (None, images); InvalidInput if the blob is not a payload."""
    try:
        arrays = _unpack(bytes(blob))
    except (ValueError, OSError, EOFError, TypeError, KeyError) as exc:
        raise InvalidInput(f"stored job payload is unreadable: {exc}") from None
    if kind == "images":
        return None, [arrays[name].tobytes() for name in sorted(arrays)]
    if kind == "tensors":
        return arrays, None
    raise InvalidInput(f"unknown payload kind {kind!r}")


# -- jobs ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    seq: int
    id: str
    model: str
    version: str | None
    payload_kind: str
    payload: bytes
    status: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: float | None
    created: float
    started: float | None
    finished: float | None
    result_id: str | None
    error: str | None
    link: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def worker(self) -> str | None:
        """The worker that holds (or last held) the job, without the attempt suffix."""
        return self.lease_owner.rsplit("#", 1)[0] if self.lease_owner else None

    @property
    def source(self) -> str:
        return SOURCE_SYNC_ASYNC if self.link else SOURCE_ASYNC


# the condition of ``jobs_by_status`` (schema 9), written as the index says it: a query that
# repeats it is answered from that index
_CLAIMED = "lease_owner IS NOT NULL AND status IN ('queued', 'running')"
_STATE_COLUMNS = ", ".join("x'' AS payload" if f.name == "payload" else f.name for f in fields(Job))


def idempotent_id(key: str) -> str:
    """The job id a client's ``Idempotency-Key`` maps to: a retried submit finds its job."""
    return hashlib.sha256(b"edge-agent job\0" + key.encode()).hexdigest()[:32]


# SD-card wear (schema 9): a job's id is its seq (the rowid, 12 hex digits) and 14 random hex
# digits, so it is found by seq and queueing it writes no index page; ids of 32 characters
# (an Idempotency-Key's hash, jobs queued by older agents) are found through ``jobs_by_id``.
_SEQ_ID = re.compile(r"[0-9a-f]{26}")
KEYED_ID_LEN = 32


def seq_id(seq: int) -> str:
    """A new job id for the job stored at ``seq`` (unguessable: 56 random bits)."""
    return f"{seq:012x}{secrets.token_hex(7)}"


def _where_id(job_id: str) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause that finds ``job_id`` through the rowid or the id index, never a scan."""
    if _SEQ_ID.fullmatch(job_id):
        return "seq = ? AND id = ?", (int(job_id[:12], 16), job_id)
    return f"id = ? AND length(id) = {KEYED_ID_LEN}", (job_id,)


class JobQueue:
    def __init__(
        self,
        storage: Storage,
        *,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        doorbell: Doorbell | None = None,
    ) -> None:
        self.storage = storage
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.doorbell = doorbell
        self._cursor = 0  # rowid from which jobs never claimed are looked for (``_claimable``)

    # -- producer side ---------------------------------------------------------------
    def add(
        self,
        conn: sqlite3.Connection,
        *,
        model: str,
        version: str | None,
        kind: PayloadKind,
        payload: bytes,
        link: str | None = None,
        job_id: str | None = None,
    ) -> str:
        """Insert a queued job inside the caller's transaction; its id. Call ``notify()`` after
        commit.

        Without ``job_id`` the id is made from the job's seq (``seq_id``). With an explicit
        ``job_id`` (32 characters, e.g. ``idempotent_id``) that already exists, nothing is
        inserted (idempotent submit).
        """
        values = (model, version, kind, payload, self.max_attempts, now(), link)
        columns = "model, version, payload_kind, payload, status, max_attempts, created, link"
        if job_id is None:  # the caller holds the write lock: the next seq is ours
            seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0])
            jid = seq_id(seq)
            conn.execute(
                f"INSERT INTO jobs (seq, id, {columns}) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (seq, jid, *values),
            )
            return jid
        if len(job_id) != KEYED_ID_LEN:
            raise ValueError(f"an explicit job id has {KEYED_ID_LEN} characters, not {len(job_id)}")
        conn.execute(
            f"INSERT INTO jobs (id, {columns}) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?) "
            f"ON CONFLICT(id) WHERE length(id) = {KEYED_ID_LEN} DO NOTHING",
            (job_id, *values),
        )
        return job_id

    def enqueue(
        self,
        *,
        model: str,
        version: str | None,
        kind: PayloadKind,
        payload: bytes,
        link: str | None = None,
        job_id: str | None = None,
    ) -> str:
        self.storage.require_room("queueing a job")
        jid = self.storage.write(
            lambda conn: self.add(
                conn, model=model, version=version, kind=kind, payload=payload, link=link, job_id=job_id
            ),
            "queueing a job",
        )
        self.notify()
        return jid

    def notify(self) -> None:
        """Wake the workers (after the job's transaction committed)."""
        if self.doorbell is not None:
            self.doorbell.ring()

    # -- worker side -------------------------------------------------------------------
    def claim(self, owner: str) -> Job | None:
        """Take the oldest claimable job under a fresh lease, or None."""
        jobs = self.claim_many(owner, 1)
        return jobs[0] if jobs else None

    def claim_many(self, owner: str, limit: int) -> list[Job]:
        """Take up to ``limit`` of the oldest claimable jobs, each under a fresh lease, in one
        transaction (one commit for them all)."""
        return self.exchange(owner, (), limit)[1]

    def exchange(
        self, owner: str, done: Sequence[tuple[Job, dict[str, Any], str]], limit: int
    ) -> tuple[list[bool], list[Job]]:
        """Record finished jobs (see ``complete``) and claim up to ``limit`` more, in one
        transaction: a busy worker commits once per group of jobs, not twice per job."""
        with self.storage.transaction(what="recording job results") as conn:
            recorded = [self._complete(conn, job, body, version) for job, body, version in done]
            if limit <= 0:
                return recorded, []
            t = now()
            self._expire(conn, t)
            seqs, cursor = self._claimable(conn, t, limit)
            conn.executemany(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
                "lease_owner = ? || '#' || (attempts + 1), lease_expires = ?, started = ? WHERE seq = ?",
                [(owner, t + self.lease_s, t, seq) for seq in seqs],
            )
            select = "SELECT * FROM jobs WHERE seq = ?"
            claimed = [Job.from_row(conn.execute(select, (seq,)).fetchone()) for seq in seqs]
        self._cursor = cursor  # only once committed: a claim rolled back leaves its jobs to find
        return recorded, claimed

    def _claimable(self, conn: sqlite3.Connection, t: float, limit: int) -> tuple[list[int], int]:
        """The seqs of up to ``limit`` of the oldest claimable jobs (inside the claim's transaction),
        and the cursor to keep once they are claimed.

        Jobs claimed before (retries, expired leases) are in ``jobs_by_status``. Jobs never
        claimed are not indexed (SD-card wear: queueing writes no index page for them); they are
        found by rowid from ``self._cursor``: when it was set, every job below it had been
        claimed, and a job queued later gets a higher rowid (rows are inserted under the write
        lock and retention never deletes the newest row, so rowids only grow)."""
        fresh = conn.execute(
            "SELECT seq, created FROM jobs WHERE seq >= ? AND lease_owner IS NULL "
            "AND status = 'queued' ORDER BY seq LIMIT ?",
            (self._cursor, limit),
        ).fetchall()
        again = conn.execute(
            f"SELECT seq, created FROM jobs WHERE {_CLAIMED} AND status = 'queued' "
            "AND (lease_expires IS NULL OR lease_expires <= ?) ORDER BY created LIMIT ?",
            (t, limit),
        ).fetchall()
        taken = sorted(fresh + again, key=lambda r: (r[1], r[0]))[:limit]
        took = {r[0] for r in taken}
        left = [r[0] for r in fresh if r[0] not in took]
        if left:
            cursor = min(left)
        elif len(fresh) == limit:  # more may follow the last one read
            cursor = fresh[-1][0] + 1
        else:
            top = conn.execute("SELECT MAX(seq) FROM jobs").fetchone()[0]
            cursor = (top or 0) + 1
        return [r[0] for r in taken], cursor

    def _expire(self, conn: sqlite3.Connection, t: float) -> None:
        """Leases that passed: back to the queue, or failed when out of attempts."""
        conn.execute(
            "UPDATE jobs SET status = 'failed', finished = ?, lease_expires = NULL, "
            "error = 'lease expired on the last attempt (worker died or hung)' "
            f"WHERE {_CLAIMED} AND status = 'running' AND lease_expires < ? AND attempts >= max_attempts",
            (t, t),
        )
        conn.execute(
            "UPDATE jobs SET status = 'queued', lease_expires = NULL, "
            "error = 'lease expired (worker died or hung); retrying' "
            f"WHERE {_CLAIMED} AND status = 'running' AND lease_expires < ?",
            (t,),
        )

    def requeue_expired(self) -> None:
        with self.storage.transaction() as conn:
            self._expire(conn, now())

    def complete(self, job: Job, body: dict[str, Any], version: str) -> bool:
        """Record the result (and its outbox entry) iff ``job``'s lease is still ours.

        A lease that expired but was not claimed again (status back to queued, owner
        unchanged) still counts: nobody else holds the job, so the work is not wasted.
        The stored input is dropped once the result is kept (a failed job keeps it).
        """
        return self.complete_many([(job, body, version)])[0]

    def complete_many(self, done: Sequence[tuple[Job, dict[str, Any], str]]) -> list[bool]:
        """``complete`` for several jobs in one transaction (one commit); recorded or not, each."""
        return self.exchange("", done, 0)[0]

    def _complete(self, conn: sqlite3.Connection, job: Job, body: dict[str, Any], version: str) -> bool:
        n = conn.execute(
            "UPDATE jobs SET status = 'done', finished = ?, result_id = id, lease_expires = NULL, "
            "error = NULL, payload = x'' "
            "WHERE seq = ? AND lease_owner = ? AND status IN ('running', 'queued')",
            (now(), job.seq, job.lease_owner),
        ).rowcount
        if n != 1:  # the lease was taken over: the other claim records the result
            return False
        self.storage.record_result(
            conn,
            source=job.source,
            model=job.model,
            version=version,
            body=body,
            ref=job.link,
            result_id=job.id,
        )
        return True

    def fail(self, job: Job, error: str, *, retry: bool = True) -> Status | None:
        """Record a failed attempt: queued again (after a backoff) or failed for good.

        Returns the new status, or None when the lease was no longer ours.
        """
        t = now()
        final = not retry or job.attempts >= job.max_attempts
        with self.storage.transaction() as conn:
            if final:
                n = conn.execute(
                    "UPDATE jobs SET status = 'failed', finished = ?, lease_expires = NULL, error = ? "
                    "WHERE seq = ? AND lease_owner = ? AND status = 'running'",
                    (t, error, job.seq, job.lease_owner),
                ).rowcount
            else:
                backoff = min(self.lease_s, RETRY_BASE_S * 2 ** (job.attempts - 1))
                n = conn.execute(
                    "UPDATE jobs SET status = 'queued', lease_expires = ?, error = ? "
                    "WHERE seq = ? AND lease_owner = ? AND status = 'running'",
                    (t + backoff, error, job.seq, job.lease_owner),
                ).rowcount
        if n != 1:
            return None
        return "failed" if final else "queued"

    def give_back(self, job: Job) -> bool:
        """Put a claimed job back in the queue without counting the attempt (the disk was full:
        not the job's fault). False if that write failed too; the lease then expires as usual."""
        try:
            with self.storage.transaction(what="giving a job back") as conn:
                conn.execute(
                    "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), "
                    "lease_expires = NULL WHERE seq = ? AND lease_owner = ? AND status = 'running'",
                    (job.seq, job.lease_owner),
                )
        except StorageError:
            return False
        return True

    def next_deadline(self) -> float | None:
        """The earliest time a job may become claimable without a ring (lease end, retry time)."""
        row = self.storage.conn.execute(
            f"SELECT MIN(lease_expires) FROM jobs WHERE {_CLAIMED} AND lease_expires IS NOT NULL"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str, *, payload: bool = False) -> Job:
        """The job's state; its (possibly large) input only with ``payload=True``."""
        columns = "*" if payload else _STATE_COLUMNS
        where, args = _where_id(job_id)
        row = self.storage.conn.execute(f"SELECT {columns} FROM jobs WHERE {where}", args).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}", job_id=job_id)
        return Job.from_row(row)

    def result_body(self, job: Job) -> dict[str, Any] | None:
        if job.result_id is None:
            return None
        row = self.storage.conn.execute("SELECT body FROM results WHERE id = ?", (job.result_id,)).fetchone()
        return None if row is None else unpack_body(row["body"])

    def counts(self) -> dict[str, int]:
        rows = self.storage.conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        out = dict.fromkeys(("queued", "running", "done", "failed"), 0)
        out.update({r["status"]: int(r["n"]) for r in rows})
        return out
