"""Free space on the data directory's filesystem, as a state every role acts on.

A device's disk filling up is expected, not an internal error. Three levels,
from the free bytes of the filesystem that holds the SQLite file:

- ``ok``: free space at or above ``floor``.
- ``shedding``: below ``floor``: optional writes stop first (prediction and
  data caches, camera thumbnails), so results keep room.
- ``refusing``: below ``reserve``: new work is refused up front (HTTP writes
  answer 507, the camera stops recording); the space left is kept for the
  results of work already accepted and for the sync role's deletes.

SQLite answering ``SQLITE_FULL`` anywhere is ``storage.DiskFull`` (507) on top
of this. Nothing here writes: the state is computed from ``statvfs`` (cached
for ``CHECK_EVERY_S``, measured afresh before each write), so every process
derives the same state on its own, and recovery is automatic the moment space
comes back.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DiskLevel = Literal["ok", "shedding", "refusing"]
LEVELS: tuple[DiskLevel, ...] = ("ok", "shedding", "refusing")
CHECK_EVERY_S = 0.5  # statvfs is cheap, but not free on every request
MIB = 1024 * 1024
DEFAULT_FLOOR_BYTES = 64 * MIB
DEFAULT_RESERVE_BYTES = 16 * MIB


@dataclass(frozen=True, slots=True)
class DiskState:
    free_bytes: int
    total_bytes: int
    floor_bytes: int
    reserve_bytes: int

    @property
    def level(self) -> DiskLevel:
        if self.free_bytes < self.reserve_bytes:
            return "refusing"
        if self.free_bytes < self.floor_bytes:
            return "shedding"
        return "ok"

    def to_dict(self) -> dict[str, int | str]:
        return {
            "state": self.level,
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "floor_bytes": self.floor_bytes,
            "reserve_bytes": self.reserve_bytes,
        }


class DiskSpace:
    """The free-space state of one directory's filesystem, plus this process's shed-write counts."""

    def __init__(
        self,
        directory: Path,
        *,
        floor_bytes: int = DEFAULT_FLOOR_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.floor_bytes = max(floor_bytes, reserve_bytes)
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._state: DiskState | None = None
        self._checked = 0.0
        self.shed: Counter[str] = Counter()  # optional writes skipped, by kind (this process)
        self.refused: Counter[str] = Counter()  # writes refused for lack of space, by kind (this process)

    def state(self, *, fresh: bool = False) -> DiskState:
        now = time.monotonic()
        with self._lock:
            if fresh or self._state is None or now - self._checked >= CHECK_EVERY_S:
                self._state = self._measure()
                self._checked = now
            return self._state

    def _measure(self) -> DiskState:
        try:
            st = os.statvfs(self.directory)
        except OSError:  # the directory vanished or is unreadable: nothing to shed on
            return DiskState(0, 0, self.floor_bytes, 0)
        # f_bavail: blocks an unprivileged writer may use; a root process may also use f_bfree, but
        # basing the levels on the smaller figure keeps the reserve of ext4 out of the budget
        return DiskState(
            st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, self.floor_bytes, self.reserve_bytes
        )

    @property
    def level(self) -> DiskLevel:
        return self.state().level

    def allow_optional(self, kind: str) -> bool:
        """May an optional write of ``kind`` (cache fill, thumbnail) happen now? Counted when not."""
        if self.state().level == "ok":
            return True
        self.shed[kind] += 1
        return False

    def has_room(self, kind: str) -> bool:
        """May new work of ``kind`` be accepted now? Counted when not. Measured afresh (one
        ``statvfs``, microseconds beside the write's fsync): a write that still fits in blocks
        SQLite's WAL already holds would otherwise be accepted for up to ``CHECK_EVERY_S`` after
        the disk filled."""
        if self.state(fresh=True).level != "refusing":
            return True
        self.refused[kind] += 1
        return False

    def note_full(self, kind: str) -> None:
        """A write of ``kind`` hit SQLITE_FULL / ENOSPC: counted, and the state re-read next time."""
        self.refused[kind] += 1
        with self._lock:
            self._state = None

    def to_dict(self) -> dict[str, object]:
        return {
            **self.state().to_dict(),
            "shed": dict(self.shed),
            "refused": dict(self.refused),
        }
