"""Prediction cache: answers keyed by model, version and the canonical input.

``key = sha256(model, version, manifest fingerprint, input digest)``. The input
digest is taken *after* validation, so one question asked as JSON float64 rows
or as a float32 ``.npy`` body is one entry (dtype, shape and raw bytes of each
validated array); images are keyed by the sha256 of their encoded bytes. A
version switch therefore never meets the old version's answers: their keys
hold the old version (and the old manifest's fingerprint, model file sha256
included).

Entries live in the ``prediction_cache`` table (they survive a restart) with an
in-process LRU in front. Bounds (entries and bytes), TTL and least-recently-used
eviction apply to the table; its totals are kept in the ``counters`` table in
the same transactions, so every process sharing the file sees one bound.
Writes are write-behind on one background thread: an answer is in memory at
once and on disk soon after (``flush()`` waits); the answers put within
``STORE_WINDOW_S`` are stored in one transaction. A hit writes nothing: its
``last_used`` is kept in memory and written with the next stored answer (or at
``flush``/``close``), so a read path never writes.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.package import Manifest
from edge_agent.storage import Storage

logger = logging.getLogger(__name__)

ENTRIES = "cache.prediction.entries"
BYTES = "cache.prediction.bytes"
MAGIC = b"EPC1"
MEMORY_MAX_BYTES = 16 * 1024 * 1024
EVICT_CHUNK = 64
STORE_WINDOW_S = 0.05  # answers put within this are stored in one transaction
MAX_TOUCHES = 4096  # hit times held for the next write; beyond, the LRU order is approximate

EventSink = Callable[[str, int], None]


def _ignore(event: str, n: int) -> None:
    pass


# -- keys ------------------------------------------------------------------------------
def fingerprint(manifest: Manifest) -> str:
    """Everything in a package that shapes an answer: model file hash, pre/post-processing, labels."""
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()


def tensors_digest(inputs: Mapping[str, np.ndarray]) -> bytes:
    """Digest of validated inputs: name, dtype, shape and raw bytes of each (C-contiguous) array."""
    h = hashlib.sha256(b"tensors")
    for name in sorted(inputs):
        arr = np.ascontiguousarray(inputs[name])
        h.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.data)
    return h.digest()


def images_digest(image_hashes: Sequence[bytes]) -> bytes:
    """Digest of encoded images, from the sha256 of each (a data item's id is that hash)."""
    h = hashlib.sha256(b"images")
    for digest in image_hashes:
        h.update(digest)
    return h.digest()


def image_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def prediction_key(model: str, version: str, model_fingerprint: str, input_digest: bytes) -> str:
    h = hashlib.sha256(f"{model}\0{version}\0{model_fingerprint}\0".encode())
    h.update(input_digest)
    return h.hexdigest()


# -- values ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    """What a cached prediction gives back: raw output tensors and post-processed results."""

    outputs: dict[str, np.ndarray]
    results: list[dict[str, Any]]


def encode_answer(answer: Answer) -> bytes | None:
    """MAGIC, u32 header length, JSON header (results, output layout), raw output bytes.

    None when an output cannot be stored as raw bytes (object dtype).
    """
    layout, blobs, offset = [], [], 0
    for name, arr in answer.outputs.items():
        if arr.dtype.hasobject:
            return None
        raw = np.ascontiguousarray(arr).tobytes()
        layout.append([name, arr.dtype.str, list(arr.shape), offset, len(raw)])
        blobs.append(raw)
        offset += len(raw)
    header = orjson.dumps({"results": answer.results, "outputs": layout}, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])


def decode_answer(blob: bytes) -> Answer:
    """Fresh result objects on every call; outputs are read-only views of ``blob``."""
    if blob[:4] != MAGIC:
        raise ValueError("not a cached prediction")
    (n,) = struct.unpack_from("<I", blob, 4)
    header = orjson.loads(blob[8 : 8 + n])
    base = 8 + n
    outputs = {
        name: np.frombuffer(
            blob, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=base + off
        ).reshape(shape)
        for name, dtype, shape, off, _size in header["outputs"]
    }
    return Answer(outputs, header["results"])


# -- the cache -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Held:
    model: str
    version: str
    blob: bytes
    expires: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    memory_entries: int
    memory_bytes: int


class PredictionCache:
    def __init__(
        self,
        storage: Storage,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        memory_max_bytes: int | None = None,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.memory_max_bytes = min(
            max_bytes, MEMORY_MAX_BYTES if memory_max_bytes is None else memory_max_bytes
        )
        self._event = on_event if on_event is not None else _ignore
        self._clock = clock
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, _Held] = OrderedDict()
        self._memory_bytes = 0
        self._touched: dict[str, float] = {}
        self._last_touch_flush = clock()
        self._flush_queued = False
        self._pending: list[tuple[str, str, str, bytes, float, float]] = []
        self._store_queued = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-cache")
        self._closed = False
        self._writer.submit(self._job, self._reconcile).result()

    # -- reads -----------------------------------------------------------------------
    def get(self, key: str) -> Answer | None:
        """The cached answer for ``key``, or None (counted as hit, miss or expired)."""
        now = self._clock()
        with self._lock:
            held = self._memory.get(key)
            if held is not None and held.expires > now:
                self._memory.move_to_end(key)
                self._touch(key, now)
                blob: bytes | None = held.blob
            else:
                blob = None
                if held is not None:
                    self._drop(key)
        if blob is None:
            blob = self._get_stored(key, now)
        answer = _decode_or_none(blob)
        if answer is None:
            self._event("miss", 1)
            return None
        self._event("hit", 1)
        return answer

    def _get_stored(self, key: str, now: float) -> bytes | None:
        try:
            row = self.storage.conn.execute(
                "SELECT model, version, value, expires FROM prediction_cache WHERE key = ?", (key,)
            ).fetchone()
        except (sqlite3.Error, EdgeAgentError) as exc:
            logger.warning("prediction cache read failed, treated as a miss: %s", exc)
            return None
        if row is None:
            return None
        if row["expires"] <= now:
            self._event("expired", 1)
            self._submit(self._delete_expired, key, now)
            return None
        blob: bytes = row["value"]
        with self._lock:
            self._hold(key, _Held(row["model"], row["version"], blob, row["expires"]))
            self._touch(key, now)
        return blob

    # -- writes ----------------------------------------------------------------------
    def put(self, key: str, model: str, version: str, answer: Answer) -> bool:
        """Remember ``answer``; False when it cannot be cached (too big, not storable)."""
        blob = encode_answer(answer)
        if blob is None or len(blob) > self.max_bytes:
            return False
        now = self._clock()
        expires = now + self.ttl_s
        with self._lock:
            self._hold(key, _Held(model, version, blob, expires))
        if self.storage.disk.allow_optional("prediction_cache"):  # short of space: memory tier only
            with self._lock:
                self._pending.append((key, model, version, blob, now, expires))
                queued, self._store_queued = self._store_queued, True
            if not queued:
                self._submit(self._store_pending)
        return True

    def purge(self, model: str | None = None, keep_version: str | None = None) -> None:
        """Forget the answers of ``model`` (every model when None), except ``keep_version``'s."""
        with self._lock:
            for key in [k for k, h in self._memory.items() if _matches(h, model, keep_version)]:
                self._drop(key)
        self._submit(self._purge, model, keep_version)

    def flush(self) -> None:
        """Wait until every write so far (last-use times included) is on disk."""
        if not self._closed:
            self._writer.submit(self._job, self._store_pending).result()
            self._writer.submit(self._job, self._flush_touches).result()

    def stats(self) -> CacheStats:
        entries, size = _totals(self.storage.conn)
        with self._lock:
            return CacheStats(entries, size, len(self._memory), self._memory_bytes)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._writer.submit(self.storage.close)
        self._writer.shutdown(wait=True)

    # -- memory tier (call with the lock held) ------------------------------------------
    def _hold(self, key: str, held: _Held) -> None:
        self._drop(key)
        if len(held.blob) > self.memory_max_bytes:
            return
        self._memory[key] = held
        self._memory_bytes += len(held.blob)
        while self._memory_bytes > self.memory_max_bytes or len(self._memory) > self.max_entries:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old.blob)

    def _drop(self, key: str) -> None:
        held = self._memory.pop(key, None)
        if held is not None:
            self._memory_bytes -= len(held.blob)

    def _touch(self, key: str, now: float) -> None:
        """Remember a hit's time; written with the next stored answer (or at ``flush``), so a
        stream of hits alone writes nothing: no write on the read path."""
        if len(self._touched) < MAX_TOUCHES:
            self._touched[key] = now

    # -- disk (writer thread) ------------------------------------------------------------
    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._closed:
            self._writer.submit(self._job, fn, *args)

    def _job(self, fn: Callable[..., None], *args: Any) -> None:
        """Run one write; a cache that cannot write degrades to misses, it never fails a request."""
        try:
            fn(*args)
        except (sqlite3.Error, EdgeAgentError) as exc:
            logger.warning("prediction cache write failed: %s", exc)

    def _reconcile(self) -> None:
        with self.storage.transaction() as conn:
            entries, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(value)), 0) FROM prediction_cache"
            ).fetchone()
            for name, value in ((ENTRIES, entries), (BYTES, size)):
                self.storage.set_counter(conn, name, value)
            evicted = self._evict(conn)
        self._forget_evicted(evicted)

    def _store_pending(self) -> None:
        """Store every answer put since the last store in one transaction (group commit: the
        pages they share are written once). Waits up to ``STORE_WINDOW_S`` for more first: the
        cache is not on the durability path, no request waits for this."""
        time.sleep(STORE_WINDOW_S)
        with self._lock:
            pending, self._pending = self._pending, []
            self._store_queued = False
        if not pending:
            return
        entries = size = 0
        with self.storage.transaction(what="filling the prediction cache") as conn:
            self._write_touches(conn, self._take_touches())
            for key, model, version, blob, now, expires in pending:
                old = conn.execute(
                    "SELECT length(value) FROM prediction_cache WHERE key = ?", (key,)
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO prediction_cache "
                    "(key, model, version, value, size, created, expires, last_used) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, model, version, blob, len(blob), now, expires, now),
                )
                entries += 0 if old else 1
                size += len(blob) - (old[0] if old else 0)
            self.storage.bump(conn, ENTRIES, entries)
            self.storage.bump(conn, BYTES, size)
            evicted = self._evict(conn)
        self._forget_evicted(evicted)

    def _evict(self, conn: sqlite3.Connection) -> list[str]:
        """Delete least-recently-used rows until both bounds hold."""
        evicted: list[str] = []
        while True:
            entries, size = _totals(conn)
            if entries <= self.max_entries and size <= self.max_bytes:
                return evicted
            rows = conn.execute(
                "SELECT key, length(value) FROM prediction_cache ORDER BY last_used, rowid LIMIT ?",
                (EVICT_CHUNK,),
            ).fetchall()
            if not rows:
                return evicted
            n = freed = 0
            for key, length in rows:
                if entries - n <= self.max_entries and size - freed <= self.max_bytes:
                    break
                conn.execute("DELETE FROM prediction_cache WHERE key = ?", (key,))
                evicted.append(key)
                n += 1
                freed += length
            self.storage.bump(conn, ENTRIES, -n)
            self.storage.bump(conn, BYTES, -freed)

    def _forget_evicted(self, keys: list[str]) -> None:
        if not keys:
            return
        with self._lock:
            for key in keys:
                self._drop(key)
        self._event("eviction", len(keys))

    def _delete_rows(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
        n, freed = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(length(value)), 0) FROM prediction_cache WHERE {where}", args
        ).fetchone()
        if n:
            conn.execute(f"DELETE FROM prediction_cache WHERE {where}", args)
            self.storage.bump(conn, ENTRIES, -n)
            self.storage.bump(conn, BYTES, -freed)

    def _delete_expired(self, key: str, now: float) -> None:
        with self.storage.transaction() as conn:
            self._delete_rows(conn, "key = ? AND expires <= ?", (key, now))

    def _purge(self, model: str | None, keep_version: str | None) -> None:
        where, args = "1 = 1", []
        if model is not None:
            where, args = where + " AND model = ?", [model]
        if keep_version is not None:
            where, args = where + " AND version != ?", [*args, keep_version]
        with self.storage.transaction() as conn:
            self._delete_rows(conn, where, tuple(args))

    def _take_touches(self) -> dict[str, float]:
        with self._lock:
            touched, self._touched = self._touched, {}
            self._last_touch_flush = self._clock()
            self._flush_queued = False
        return touched

    def _flush_touches(self) -> None:
        touched = self._take_touches()
        if touched:
            with self.storage.transaction() as conn:
                self._write_touches(conn, touched)

    @staticmethod
    def _write_touches(conn: sqlite3.Connection, touched: dict[str, float]) -> None:
        if touched:
            conn.executemany(
                "UPDATE prediction_cache SET last_used = ? WHERE key = ?",
                [(t, k) for k, t in touched.items()],
            )


def _decode_or_none(blob: bytes | None) -> Answer | None:
    if blob is None:
        return None
    try:
        return decode_answer(blob)
    except (ValueError, KeyError, TypeError, struct.error) as exc:  # written by another format
        logger.warning("unreadable cached prediction, recomputed: %s", exc)
        return None


def _matches(held: _Held, model: str | None, keep_version: str | None) -> bool:
    return (model is None or held.model == model) and held.version != keep_version


def _totals(conn: sqlite3.Connection) -> tuple[int, int]:
    rows = dict(
        conn.execute("SELECT name, value FROM counters WHERE name IN (?, ?)", (ENTRIES, BYTES)).fetchall()
    )
    return int(rows.get(ENTRIES, 0)), int(rows.get(BYTES, 0))
