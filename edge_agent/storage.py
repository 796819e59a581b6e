"""The device's SQLite file: the only owner of its schema.

One file in WAL mode shared by every process role (gateway, worker, batch,
camera, sync). Durability across power loss comes from SQLite itself
(``synchronous=FULL`` for the rows that must never be lost). Each process
opens its own ``Storage``; writes that claim work use ``BEGIN IMMEDIATE`` so
two processes can never claim the same row.

A result is recorded together with its outbox entry in one transaction: a
result the device has is a result the fleet link will deliver.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.clock import boot_id, boot_seconds, clock_trust_cached
from edge_agent.diskspace import DEFAULT_FLOOR_BYTES, DEFAULT_RESERVE_BYTES, DiskSpace
from edge_agent.errors import EdgeAgentError, NoSpace
from edge_agent.groupcommit import GroupCommit
from edge_agent.sqlitefile import SchemaTooNewError, UserVersion, connect, migrate, sql_script

logger = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "agent.sqlite3"
BUSY_TIMEOUT_MS = 10_000
# SD-card wear (docs/operations.md): a commit writes every page it changed whole to the WAL. A
# result changes a few bytes on each of several pages (table and index leaves), so 512-byte pages
# write about half of what 1 KiB pages write for the same rows (an eighth of SQLite's default
# 4 KiB); trees are a level deeper, which costs reads, not writes. Set when the file is created;
# an existing file keeps its page size.
PAGE_SIZE = 512
WAL_AUTOCHECKPOINT_PAGES = (
    4 * 1024 * 1024 // PAGE_SIZE
)  # 4 MiB of WAL between checkpoints, as SQLite's default

# Each migration moves the schema from version i to i + 1. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT,
        payload_kind TEXT NOT NULL CHECK (payload_kind IN ('tensors', 'images')),
        payload BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        lease_owner TEXT,
        lease_expires REAL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        result_id TEXT,
        error TEXT,
        link TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, created);

    CREATE TABLE batch_items (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        payload_kind TEXT NOT NULL CHECK (payload_kind IN ('tensors', 'images')),
        payload BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires REAL,
        created REAL NOT NULL,
        finished REAL,
        run_id TEXT,
        result_id TEXT,
        error TEXT
    );
    CREATE INDEX batch_items_by_status ON batch_items (status, created);

    CREATE TABLE results (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        ref TEXT,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        created REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX results_by_created ON results (created);
    CREATE INDEX results_by_ref ON results (ref);

    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_sent REAL
    );

    CREATE TABLE prediction_cache (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        value BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        last_used REAL NOT NULL
    );
    CREATE INDEX prediction_cache_lru ON prediction_cache (last_used);

    CREATE TABLE data_items (
        id TEXT PRIMARY KEY,
        content_type TEXT NOT NULL,
        data BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );

    CREATE TABLE data_cache (
        item_id TEXT NOT NULL,
        prep_key TEXT NOT NULL,
        tensor BLOB NOT NULL,
        size INTEGER NOT NULL,
        last_used REAL NOT NULL,
        PRIMARY KEY (item_id, prep_key)
    );
    CREATE INDEX data_cache_lru ON data_cache (last_used);

    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    # 2: commands received over the fleet link, for at-most-once execution
    """
    CREATE TABLE IF NOT EXISTS sync_commands (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        received REAL NOT NULL,
        finished REAL,
        reply TEXT
    );
    CREATE INDEX IF NOT EXISTS sync_commands_by_received ON sync_commands (received);
    """,
    # 3: results recorded while the wall clock was not trusted (clock.py): marked, with the
    # boot they were recorded in and seconds since that boot, so their time can be corrected
    """
    ALTER TABLE results ADD COLUMN clock TEXT;
    ALTER TABLE results ADD COLUMN boot TEXT;
    ALTER TABLE results ADD COLUMN boot_s REAL;
    CREATE INDEX results_unsynced ON results (clock) WHERE clock = 'unsynced';
    """,
    # 4: SD-card wear: only results that name something (a batch item, a camera run, a linked
    # job) are looked up by ref; results of plain async jobs have none and now touch no page of
    # this index (one 1 KiB page less per result when each result is its own commit)
    """
    DROP INDEX results_by_ref;
    CREATE INDEX results_by_ref ON results (ref) WHERE ref IS NOT NULL;
    """,
    # 5: SD-card wear: a job never claimed (no lease_owner yet) is found by its rowid, from each
    # worker's cursor (jobs.py); the status index holds only jobs claimed at least once, so
    # queueing a job writes one table leaf and its id's index leaf, not a third page
    """
    DROP INDEX jobs_by_status;
    CREATE INDEX jobs_by_status ON jobs (status, created) WHERE lease_owner IS NOT NULL;
    """,
    # 6: SD-card wear: an outbox row's seq is its result's rowid, so the outbox needs no index
    # on id (acknowledgements and retention reach it through the results' id index) and no
    # AUTOINCREMENT (no sqlite_sequence page in every commit that records results). Rows whose
    # result is gone (envelopes written by agents before results were stored once) keep their
    # order below zero.
    """
    CREATE TABLE outbox_v6 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_sent REAL
    );
    INSERT INTO outbox_v6 (seq, id, kind, body, created, attempts, last_sent)
        SELECT COALESCE(
                   (SELECT r.rowid FROM results r WHERE r.id = o.id),
                   o.seq - (SELECT MAX(seq) FROM outbox) - 1
               ),
               o.id, o.kind, o.body, o.created, o.attempts, o.last_sent
        FROM outbox o ORDER BY o.seq;
    DROP TABLE outbox;
    ALTER TABLE outbox_v6 RENAME TO outbox;
    """,
    # 7: SD-card wear: results are listed newest first and pruned oldest first in rowid order
    # (the order they were recorded in, whatever the clock said), so no index on created
    """
    DROP INDEX results_by_created;
    """,
    # 8: clock corrections waiting for the cloud (``retention.correct_unsynced`` writes them, the
    # sync role's ``corrections.py`` sends them until acknowledged): one per boot and seq range,
    # in a table of their own (an outbox row's seq is its result's rowid)
    """
    CREATE TABLE clock_corrections (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        created REAL NOT NULL
    );
    INSERT OR IGNORE INTO clock_corrections (id, body, created)
        SELECT id, body, created FROM outbox WHERE kind = 'clock';
    DELETE FROM outbox WHERE kind = 'clock';
    """,
    # 9: SD-card wear: queueing a job writes one page, its row. A job queued since has an id made
    # of its rowid (``seq``, 12 hex digits) and 14 random hex digits (``jobs.py``), found by seq
    # without an index; the id index holds only 32-character ids: a job queued with an
    # Idempotency-Key (the key's hash) and every job queued before this version. The status index
    # holds only claimed jobs still queued or running, so a job done leaves it. No index on a
    # result's ref: nothing on the device looks results up by it, and every camera, batch and
    # sync-async result paid a page of it.
    """
    DROP INDEX results_by_ref;
    CREATE TABLE jobs_v9 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT,
        payload_kind TEXT NOT NULL CHECK (payload_kind IN ('tensors', 'images')),
        payload BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        lease_owner TEXT,
        lease_expires REAL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        result_id TEXT,
        error TEXT,
        link TEXT
    );
    INSERT INTO jobs_v9 (seq, id, model, version, payload_kind, payload, status, attempts, max_attempts,
                         lease_owner, lease_expires, created, started, finished, result_id, error, link)
        SELECT rowid, id, model, version, payload_kind, payload, status, attempts, max_attempts,
               lease_owner, lease_expires, created, started, finished, result_id, error, link
        FROM jobs ORDER BY rowid;
    DROP TABLE jobs;
    ALTER TABLE jobs_v9 RENAME TO jobs;
    CREATE UNIQUE INDEX jobs_by_id ON jobs (id) WHERE length(id) = 32;
    CREATE INDEX jobs_by_status ON jobs (status, created)
        WHERE lease_owner IS NOT NULL AND status IN ('queued', 'running');
    """,
)


class StorageError(EdgeAgentError):
    status = 503
    code = "storage_error"


class NotFound(EdgeAgentError):
    status = 404
    code = "not_found"


class DiskFull(StorageError, NoSpace):
    """The data directory's filesystem has no room for this write (HTTP 507)."""

    status = 507
    code = "disk_full"


_FULL_CODES = frozenset({13})  # SQLITE_FULL
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_message(disk: DiskSpace, what: str) -> str:
    st = disk.state(fresh=True)
    return (
        f"{what}: the device's disk is full ({st.free_bytes // 1024} KiB free on {disk.directory}, "
        f"{st.reserve_bytes // 1024} KiB kept for results already accepted). Work already accepted is "
        "kept and finishes; retry later, after the fleet link has delivered results or after freeing "
        "space (shorter retention, or remove other files on that filesystem)"
    )


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF in _FULL_CODES) or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch (48 bits), then 80 random bits (like a UUIDv7).
    Ids made close in time sort close together, so new rows append to the same pages of every
    index on an id instead of touching one random page each (fewer pages written per result);
    80 random bits keep them unguessable and unique, whatever the clock says."""
    return f"{time.time_ns() // 1_000_000 % (1 << 48):012x}{secrets.token_hex(10)}"


def now() -> float:
    return time.time()


# A preset dictionary for result bodies: the keys every body repeats, so zlib codes them as
# references from the first byte on. A stream names its dictionary (adler32 in its header), so
# this one must never change: a new one is added to ``_BODY_DICTS`` under its own id.
BODY_DICT = (
    b'{"boxes":[{"label":"","score":0.,"xmin":,"ymin":,"xmax":,"ymax":,"keypoints":[{"name":"","x":,"y":}]}],'
    b'"frame":,"cycle":,"captured":,"position_ms":,"width":,"height":,"camera":"","thumbnail":"",'
    b'"model":"","version":"","results":[{"label":"","index":,"score":0.,"top_k":[{"label":"","index":,'
    b'"score":0.}],"probabilities":[0.,e-]}],"timings_ms":{"preprocess":0.,"queue":0.,"infer":0.,'
    b'"postprocess":0.,"total":0.,"cache_lookup":0.}}'
)
_BODY_DICTS = {zlib.adler32(BODY_DICT): BODY_DICT}


def pack_body(body: dict[str, Any]) -> bytes:
    """A result's body as stored: its compact JSON, zlib-compressed with ``BODY_DICT`` (a BLOB).
    SD-card wear: a classification body is ~470 bytes of JSON, ~240 compressed alone and ~160
    with the dictionary, so two result rows share a 512-byte page instead of one each, and every
    commit and checkpoint writes that many fewer pages. Rows written before hold zlib without a
    dictionary, or the JSON as TEXT; ``unpack_body`` reads all three."""
    packer = zlib.compressobj(6, zdict=BODY_DICT)
    return packer.compress(json.dumps(body, separators=(",", ":")).encode()) + packer.flush()


def unpack_body(value: str | bytes) -> dict[str, Any]:
    """The body ``pack_body`` stored (BLOB, with or without a dictionary) or an older row's JSON
    (TEXT)."""
    if isinstance(value, str):
        return dict(json.loads(value))
    unpacker = zlib.decompressobj()
    if len(value) >= 6 and value[1] & 0x20:  # FDICT: the dictionary's adler32 follows the header
        zdict = _BODY_DICTS.get(int.from_bytes(value[2:6], "big"))
        if zdict is None:
            raise StorageError("a result body was packed with a dictionary this agent does not know")
        unpacker = zlib.decompressobj(zdict=zdict)
    return dict(json.loads(unpacker.decompress(value) + unpacker.flush()))


# Outbox rows with what their envelope is made of: ``body`` is the envelope itself for rows
# written before results were stored once (non-empty), else empty and the result's columns hold it.
OUTBOX_ROWS = (
    "SELECT o.seq, o.id, o.body, r.source, r.ref, r.model, r.version, r.created, r.body AS result, "
    "r.rowid AS result_seq, r.clock, r.boot, r.boot_s FROM outbox o LEFT JOIN results r ON r.id = o.id"
)


def envelope(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any] | None:
    """The result envelope an ``OUTBOX_ROWS`` row stands for; None if its result is gone."""
    _, rid, body, source, ref, model, version, created, result, seq, clock, boot, boot_s = tuple(row)
    if body:
        return dict(json.loads(body))
    if source is None:
        return None
    doc = {
        "id": rid,
        "source": source,
        "ref": ref,
        "model": model,
        "version": version,
        "created": created,
        "body": unpack_body(result),
        "seq": seq,
    }
    if clock is not None:
        doc["clock"] = clock
    if clock == "unsynced" and boot is not None and boot_s is not None:  # for a later correction
        doc["boot"], doc["boot_s"] = boot, boot_s
    return doc


OUTBOX_DROPPED = "outbox_dropped"  # counters: outbox entries given up by the on-full policy


@dataclass(frozen=True, slots=True)
class OutboxBound:
    """The outbox's bound, held where rows are written (``record_result``), whatever role runs."""

    max_rows: int = 100_000
    on_full: str = "drop_oldest"  # or "refuse_new": the entry just recorded is not forwarded


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    source: str
    ref: str | None
    model: str
    version: str
    created: float
    body: dict[str, Any]


class Storage:
    """One connection per thread to the device database (sqlite3 objects are not shareable)."""

    def __init__(self, path: Path, disk: DiskSpace | None = None, outbox: OutboxBound | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.disk = disk or DiskSpace(self.path.parent)
        self.outbox_bound = outbox or OutboxBound()
        self._group: GroupCommit | None = None
        self._group_lock = threading.Lock()
        self._local = threading.local()
        self._migrate()

    @classmethod
    def in_dir(
        cls,
        data_dir: Path,
        *,
        floor_bytes: int = DEFAULT_FLOOR_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        outbox: OutboxBound | None = None,
    ) -> Storage:
        disk = DiskSpace(Path(data_dir), floor_bytes=floor_bytes, reserve_bytes=reserve_bytes)
        return cls(Path(data_dir) / DB_NAME, disk, outbox)

    # -- connections ---------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = connect(
                    self.path,
                    busy_timeout_s=BUSY_TIMEOUT_MS / 1000,
                    page_size=PAGE_SIZE,
                    wal_autocheckpoint=WAL_AUTOCHECKPOINT_PAGES,
                )
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open {self.path}: {exc}") from None
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self, immediate: bool = True, *, what: str = "write") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` takes the write lock up front: no lost-update races.

        The first error is the one raised: SQLite ends some failed transactions itself (SQLITE_FULL,
        SQLITE_IOERR), so the rollback runs only if one is still open, and a rollback that fails is
        logged, never raised over it. SQLite errors leave as ``StorageError`` (``DiskFull``, 507,
        when the disk is full); ``what`` names the write in that message."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except sqlite3.Error as exc:
            raise self.translate(exc, what, "database busy or unavailable") from exc
        try:
            yield conn
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise self.translate(exc, what, "write failed") from exc
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise self.translate(exc, what, "commit failed") from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # never hides the error that got us here
            logger.warning("rollback after a failed transaction also failed: %s", exc)

    def translate(self, exc: BaseException, what: str, context: str = "storage error") -> StorageError:
        """A library error as this package's: ``DiskFull`` (507) for a full disk, else ``StorageError``."""
        if is_disk_full(exc):
            self.disk.note_full(what)
            return DiskFull(disk_full_message(self.disk, what))
        return StorageError(f"{context}: {exc}")

    def write(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> T:
        """``fn(conn)`` committed together with this process's concurrent writes (group commit,
        see ``groupcommit.py``); returns once its transaction is on disk."""
        return self.submit(fn, what).result()

    def submit(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> Future[T]:
        """``write`` without blocking: the future is done once the transaction is on disk (an
        event loop awaits it with ``asyncio.wrap_future``, holding no thread meanwhile)."""
        with self._group_lock:
            if self._group is None:
                self._group = GroupCommit(self)
            group = self._group
        return group.submit(fn, what)

    def require_room(self, what: str) -> None:
        """Refuse new work (``DiskFull``, 507) while free space is under the reserve."""
        if not self.disk.has_room(what):
            raise DiskFull(disk_full_message(self.disk, what))

    def close(self) -> None:
        with self._group_lock:
            group, self._group = self._group, None
        if group is not None:
            group.close()
        self.close_connection()

    def close_connection(self) -> None:
        """Close this thread's connection only."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        with self.transaction() as conn:
            try:
                migrate(conn, [sql_script(sql) for sql in MIGRATIONS], UserVersion(conn))
            except SchemaTooNewError as exc:
                raise StorageError(
                    f"{self.path} has schema version {exc.version}, newer than this agent knows "
                    f"({exc.known}); upgrade the agent"
                ) from None

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- results and the outbox ------------------------------------------------
    def record_result(
        self,
        conn: sqlite3.Connection,
        *,
        source: str,
        model: str,
        version: str,
        body: dict[str, Any],
        ref: str | None = None,
        result_id: str | None = None,
    ) -> str:
        """Insert a result and its outbox entry; call inside ``transaction()``."""
        rid = result_id or new_id()
        trust = clock_trust_cached()
        created = now()
        text = pack_body(body)
        if trust.trusted:
            conn.execute(
                "INSERT INTO results (id, source, ref, model, version, created, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rid, source, ref, model, version, created, text),
            )
        else:  # marked, with what it takes to correct the time once the clock is trusted
            conn.execute(
                "INSERT INTO results (id, source, ref, model, version, created, body, clock, boot, boot_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'unsynced', ?, ?)",
                (rid, source, ref, model, version, created, text, boot_id(), boot_seconds()),
            )
        # the outbox row names the result; its envelope is built from ``results`` when sent
        # (``OUTBOX_ROWS``), so the body is written once, not twice
        conn.execute(
            "INSERT INTO outbox (seq, id, kind, body, created) "
            "VALUES (last_insert_rowid(), ?, 'result', '', ?)",
            (rid, created),
        )
        self.bound_outbox(conn)
        return rid

    def bound_outbox(self, conn: sqlite3.Connection, bound: OutboxBound | None = None) -> int:
        """Trim the outbox to its bound by the on-full policy, inside the caller's transaction;
        the number dropped (counted in ``outbox_dropped``). The results themselves stay."""
        bound = bound or self.outbox_bound
        lo, hi = conn.execute("SELECT MIN(seq), MAX(seq) FROM outbox").fetchone()
        if lo is None or hi - lo + 1 <= bound.max_rows:  # the seq span bounds the count: the usual case
            return 0
        excess = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) - bound.max_rows
        if excess <= 0:
            return 0
        newest = bound.on_full == "refuse_new"
        conn.execute(
            f"DELETE FROM outbox WHERE seq IN "
            f"(SELECT seq FROM outbox ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT ?)",
            (excess,),
        )
        self.bump(conn, OUTBOX_DROPPED, excess)
        logger.warning(
            "outbox over %d entries: dropped the %d %s (on_full=%s)",
            bound.max_rows,
            excess,
            "newest" if newest else "oldest",
            bound.on_full,
        )
        return excess

    def result(self, result_id: str) -> Result:
        row = self.conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise NotFound(f"no result {result_id!r}")
        return Result(
            row["id"],
            row["source"],
            row["ref"],
            row["model"],
            row["version"],
            row["created"],
            unpack_body(row["body"]),
        )

    def results(self, *, source: str | None = None, ref: str | None = None, limit: int = 100) -> list[Result]:
        sql = "SELECT * FROM results WHERE 1=1"
        args: list[Any] = []
        if source is not None:
            sql += " AND source = ?"
            args.append(source)
        if ref is not None:
            sql += " AND ref = ?"
            args.append(ref)
        sql += " ORDER BY rowid DESC LIMIT ?"  # the order recorded (no index on created or ref: wear)
        args.append(limit)
        return [
            Result(
                r["id"], r["source"], r["ref"], r["model"], r["version"], r["created"], unpack_body(r["body"])
            )
            for r in self.conn.execute(sql, args)
        ]

    def outbox_depth(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- counters ------------------------------------------------------------------
    def bump(self, conn: sqlite3.Connection, name: str, by: int = 1) -> None:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def set_counter(self, conn: sqlite3.Connection, name: str, value: int) -> None:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def counter(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0
