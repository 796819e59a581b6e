"""Data cache: images registered on the device by id, and their preprocessed tensors.

An item (an uploaded image, a camera frame) is stored once in ``data_items``;
its id is the sha256 of its bytes, so registering the same bytes twice gives
the same id (and the prediction cache keys an item exactly as it keys the same
image sent inline). ``tensor(id, manifest)`` returns the model input for the
item: from ``data_cache`` when this item was prepared before with the same
preprocessing (spec version + a hash of the whole spec), else decoded and
preprocessed now and stored. A hit skips decoding and preprocessing.

Cached tensors are binary: a small header holding the ``Geometry`` (so boxes
still map back to the image's pixels) followed by the ``.npy`` bytes. The table
is bounded by bytes (``data_max_bytes``) with least-recently-used eviction; the
byte total lives in the ``counters`` table, updated in the same transaction as
the rows, so every process sharing the file (gateway, camera) keeps one bound.
A hit writes nothing at once: ``last_used`` is batched in memory and written
with the next store (or at ``flush``/``close``): reads never write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge_agent.errors import EdgeAgentError, ImageDecodeError, InvalidInput
from edge_agent.runtime.imageio import DEFAULT_MAX_PIXELS, sniff
from edge_agent.runtime.package import ImagePreprocess, Manifest
from edge_agent.runtime.preprocess import Geometry, preprocess
from edge_agent.storage import DiskFull, NotFound, Storage, StorageError

logger = logging.getLogger(__name__)

BYTES = "cache.data.bytes"
ITEM_ID = re.compile(r"^[0-9a-f]{64}$")
MAGIC = b"EDT1"
NPY_HEADER_MAX = 4096
EVICT_CHUNK = 64

EventSink = Callable[[str, int], None]


def _ignore(event: str, n: int) -> None:
    pass


@dataclass(frozen=True, slots=True)
class DataItem:
    id: str
    content_type: str
    size: int
    created: float
    width: int
    height: int
    cached: dict[str, int]  # prep key -> bytes of its cached tensor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prep_key(spec: ImagePreprocess) -> str:
    """Identity of a preprocessing: its declared version plus a hash of every setting."""
    return f"{spec.version}:{hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]}"


def encode_tensor(tensor: np.ndarray, geometry: Geometry) -> bytes:
    geo = orjson.dumps(dataclasses.asdict(geometry))
    out = io.BytesIO()
    out.write(MAGIC + struct.pack("<I", len(geo)) + geo)
    np.save(out, tensor, allow_pickle=False)
    return out.getvalue()


def decode_tensor(blob: bytes) -> tuple[np.ndarray, Geometry]:
    """The tensor is a read-only view of ``blob`` (no copy: a hit costs a few microseconds)."""
    if blob[:4] != MAGIC:
        raise ValueError("not a cached tensor")
    (n,) = struct.unpack_from("<I", blob, 4)
    geometry = Geometry(**orjson.loads(blob[8 : 8 + n]))
    header = io.BytesIO(blob[8 + n : 8 + n + NPY_HEADER_MAX])
    major, _ = np.lib.format.read_magic(header)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(header)
    flat = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=8 + n + header.tell())
    return flat.reshape(shape, order="F" if fortran else "C"), geometry


MAX_TOUCHES = 4096  # hit times held for the next write; beyond, the LRU order is approximate


def _spec(manifest: Manifest) -> ImagePreprocess:
    if manifest.preprocessing is None:
        raise InvalidInput(f"{manifest.name} takes tensors, not images (it has no image preprocessing)")
    return manifest.preprocessing


def _translate(exc: sqlite3.Error) -> StorageError:
    return StorageError(f"data store unavailable: {exc}")


class DataCache:
    def __init__(
        self,
        storage: Storage,
        *,
        max_bytes: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        background: Executor | None = None,
    ) -> None:
        """``background``: where batched last-use writes run (default: the thread of the hit)."""
        self.storage = storage
        self.max_bytes = max_bytes
        self._background = background
        self.max_pixels = max_pixels
        self._event = on_event if on_event is not None else _ignore
        self._clock = clock
        self._lock = threading.Lock()
        self._touched: dict[tuple[str, str], float] = {}
        self._last_touch_flush = clock()
        self._flush_queued = False
        try:
            with storage.transaction() as conn:
                (size,) = conn.execute("SELECT COALESCE(SUM(length(tensor)), 0) FROM data_cache").fetchone()
                storage.set_counter(conn, BYTES, size)
                self._evict(conn)
        except DiskFull as exc:  # a full disk must not keep the gateway from starting
            logger.warning("data cache: size not recounted at start: %s", exc.message)
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    # -- items -------------------------------------------------------------------------
    def register(self, data: bytes, content_type: str | None = None) -> str:
        """Store an encoded image (JPEG, PNG, BMP); its id is the sha256 of its bytes."""
        if not data:
            raise InvalidInput("empty body: send an image (JPEG, PNG or BMP)")
        info = sniff(data)
        if info.width * info.height > self.max_pixels:
            raise ImageDecodeError(
                f"image is {info.width}x{info.height} pixels, over the limit of {self.max_pixels}",
                width=info.width,
                height=info.height,
            )
        item_id = hashlib.sha256(data).hexdigest()
        self.storage.require_room("registering a data item")
        row = (item_id, f"image/{info.format}", data, len(data), self._clock())
        self.storage.write(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO data_items (id, content_type, data, size, created) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            ),
            "registering a data item",
        )
        return item_id

    def require(self, item_id: str) -> None:
        """NotFound unless ``item_id`` is a registered item."""
        try:
            found = (
                ITEM_ID.match(item_id)
                and self.storage.conn.execute("SELECT 1 FROM data_items WHERE id = ?", (item_id,)).fetchone()
            )
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        if not found:
            raise NotFound(f"no data item {item_id!r}", id=item_id)

    def item(self, item_id: str) -> DataItem:
        try:
            conn = self.storage.conn
            row = conn.execute(
                "SELECT content_type, data, size, created FROM data_items WHERE id = ?", (item_id,)
            ).fetchone()
            cached = conn.execute(
                "SELECT prep_key, length(tensor) FROM data_cache WHERE item_id = ?", (item_id,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        if row is None:
            raise NotFound(f"no data item {item_id!r}", id=item_id)
        info = sniff(bytes(row["data"]))
        return DataItem(
            item_id, row["content_type"], row["size"], row["created"], info.width, info.height, dict(cached)
        )

    def data(self, item_id: str) -> bytes:
        try:
            row = self.storage.conn.execute("SELECT data FROM data_items WHERE id = ?", (item_id,)).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        if row is None:
            raise NotFound(f"no data item {item_id!r}", id=item_id)
        return bytes(row[0])

    def delete(self, item_id: str) -> None:
        """Remove an item and every tensor cached for it."""
        try:
            with self.storage.transaction() as conn:
                if conn.execute("DELETE FROM data_items WHERE id = ?", (item_id,)).rowcount == 0:
                    raise NotFound(f"no data item {item_id!r}", id=item_id)
                (freed,) = conn.execute(
                    "SELECT COALESCE(SUM(length(tensor)), 0) FROM data_cache WHERE item_id = ?", (item_id,)
                ).fetchone()
                conn.execute("DELETE FROM data_cache WHERE item_id = ?", (item_id,))
                self.storage.bump(conn, BYTES, -freed)
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        with self._lock:
            for key in [k for k in self._touched if k[0] == item_id]:
                del self._touched[key]

    # -- tensors -----------------------------------------------------------------------
    def tensor(self, item_id: str, manifest: Manifest) -> tuple[np.ndarray, Geometry, bool]:
        """(one sample without batch dim, its geometry, whether it came from the cache)."""
        found = self.cached(item_id, manifest)
        if found is not None:
            return found[0], found[1], True
        tensor, geometry = self.prepare(item_id, manifest)
        return tensor, geometry, False

    def cached(self, item_id: str, manifest: Manifest) -> tuple[np.ndarray, Geometry] | None:
        """The cached tensor (a read-only view) and geometry, or None: a quick read, no decoding."""
        key = (item_id, prep_key(_spec(manifest)))
        try:
            row = self.storage.conn.execute(
                "SELECT tensor FROM data_cache WHERE item_id = ? AND prep_key = ?", key
            ).fetchone()
        except sqlite3.Error as exc:
            logger.warning("data cache read failed, treated as a miss: %s", exc)
            return None
        if row is None:
            return None
        self._event("hit", 1)
        self._touch(key)
        return decode_tensor(row[0])

    def prepare(self, item_id: str, manifest: Manifest) -> tuple[np.ndarray, Geometry]:
        """Decode and preprocess the item now (a miss) and cache the result."""
        spec = _spec(manifest)
        self._event("miss", 1)
        tensor, geometry = preprocess(self.data(item_id), spec, self.max_pixels)
        self._store((item_id, prep_key(spec)), encode_tensor(tensor, geometry))
        return tensor, geometry

    def flush(self) -> None:
        """Write the batched last-use times now."""
        touched = self._take_touches()
        if touched:
            try:
                with self.storage.transaction() as conn:
                    self._write_touches(conn, touched)
            except (sqlite3.Error, EdgeAgentError) as exc:
                logger.warning("data cache: last-use times not written: %s", exc)

    def used_bytes(self) -> int:
        row = self.storage.conn.execute("SELECT value FROM counters WHERE name = ?", (BYTES,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.flush()

    # -- internals ---------------------------------------------------------------------
    def _store(self, key: tuple[str, str], blob: bytes) -> None:
        if len(blob) > self.max_bytes or not self.storage.disk.allow_optional("data_cache"):
            return
        try:
            with self.storage.transaction() as conn:
                if conn.execute("SELECT 1 FROM data_items WHERE id = ?", (key[0],)).fetchone() is None:
                    return  # deleted meanwhile
                self._write_touches(conn, self._take_touches())
                old = conn.execute(
                    "SELECT length(tensor) FROM data_cache WHERE item_id = ? AND prep_key = ?", key
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO data_cache (item_id, prep_key, tensor, size, last_used) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*key, blob, len(blob), self._clock()),
                )
                self.storage.bump(conn, BYTES, len(blob) - (old[0] if old else 0))
                evicted = self._evict(conn)
        except (sqlite3.Error, EdgeAgentError) as exc:
            logger.warning("data cache: tensor not stored: %s", exc)
            return
        if evicted:
            self._event("eviction", evicted)

    def _evict(self, conn: sqlite3.Connection) -> int:
        evicted = 0
        while True:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (BYTES,)).fetchone()
            size = int(row[0]) if row else 0
            if size <= self.max_bytes:
                return evicted
            rows = conn.execute(
                "SELECT item_id, prep_key, length(tensor) FROM data_cache ORDER BY last_used, rowid LIMIT ?",
                (EVICT_CHUNK,),
            ).fetchall()
            if not rows:
                return evicted
            freed = 0
            for item_id, pkey, length in rows:
                if size - freed <= self.max_bytes:
                    break
                conn.execute("DELETE FROM data_cache WHERE item_id = ? AND prep_key = ?", (item_id, pkey))
                freed += length
                evicted += 1
            self.storage.bump(conn, BYTES, -freed)

    def _touch(self, key: tuple[str, str]) -> None:
        """Remember a hit's time; written with the next stored tensor (or at ``flush``/``close``):
        a stream of hits alone writes nothing (no write on the read path)."""
        with self._lock:
            if len(self._touched) < MAX_TOUCHES:
                self._touched[key] = self._clock()

    def _take_touches(self) -> dict[tuple[str, str], float]:
        with self._lock:
            touched, self._touched = self._touched, {}
            self._last_touch_flush = self._clock()
            self._flush_queued = False
        return touched

    @staticmethod
    def _write_touches(conn: sqlite3.Connection, touched: dict[tuple[str, str], float]) -> None:
        if touched:
            conn.executemany(
                "UPDATE data_cache SET last_used = ? WHERE item_id = ? AND prep_key = ?",
                [(t, *k) for k, t in touched.items()],
            )
