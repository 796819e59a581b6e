"""Rebuild the device database to ``storage.PAGE_SIZE`` (SD-card wear, docs/operations.md).

A database created by an older agent keeps its page size (1 KiB or 4 KiB), and a commit writes
every page it changes whole: the same result costs more writes than on a 512-byte page file.
SQLite changes an existing file's page size only by ``VACUUM`` in a rollback-journal mode:

1. exclusive locking, then ``journal_mode=DELETE``: fails ("database is locked") while any other
   connection has the file open, so a running role is never repacked under; nothing has changed;
2. ``page_size``, ``VACUUM``: atomic through its rollback journal (a crash leaves the old file,
   rolled back by the next opener, or the new one);
3. back to WAL, as ``sqlitefile.connect`` leaves it (the other pragmas are per connection).

It runs only with room for the copy: free space on the data directory's filesystem of twice the
file (the rollback journal and SQLite's temporary copy) plus the disk reserve. Whatever stops it,
the agent runs on as before; the outcome says why.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.diskspace import DEFAULT_RESERVE_BYTES, DiskSpace
from edge_agent.storage import DB_NAME, PAGE_SIZE

logger = logging.getLogger(__name__)

Outcome = Literal["repacked", "not_needed", "absent", "busy", "no_space", "failed"]


@dataclass(frozen=True, slots=True)
class RepackReport:
    outcome: Outcome
    page_size_before: int
    page_size_after: int
    bytes_before: int
    bytes_after: int
    seconds: float
    message: str

    @property
    def ok(self) -> bool:
        """Nothing left to do: repacked now, already at the page size, or no database yet."""
        return self.outcome in ("repacked", "not_needed", "absent")


def _size(path: Path) -> int:
    """The database's bytes on disk, its WAL included."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def repack(
    data_dir: Path,
    *,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    page_size: int = PAGE_SIZE,
    free_bytes: int | None = None,
) -> RepackReport:
    """Rebuild ``data_dir``'s database to ``page_size`` if it has another; never raises for a
    database it cannot repack (busy, no room, an SQLite error): the report says why, logged.
    ``free_bytes`` replaces the measured free space (tests)."""
    path = Path(data_dir) / DB_NAME
    started = time.monotonic()
    try:
        if not path.exists():
            return RepackReport("absent", 0, 0, 0, 0, 0.0, f"no database at {path}: nothing to repack")
        before = _size(path)
    except OSError as exc:
        return _report("failed", 0, 0, 0, 0, started, f"cannot read {path}: {exc}")
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    except sqlite3.Error as exc:
        return _report("failed", 0, 0, before, before, started, f"cannot open {path}: {exc}")
    try:
        return _repack(conn, path, page_size, before, started, reserve_bytes, free_bytes)
    finally:
        conn.close()


def _repack(
    conn: sqlite3.Connection,
    path: Path,
    page_size: int,
    before: int,
    started: float,
    reserve_bytes: int,
    free_bytes: int | None,
) -> RepackReport:
    try:
        old = int(conn.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.Error as exc:
        return _report("failed", 0, 0, before, before, started, f"cannot read {path}: {exc}")
    if old == page_size:
        return RepackReport(
            "not_needed", old, old, before, before, 0.0, f"{path} already has {old}-byte pages"
        )
    free = (
        DiskSpace(path.parent, reserve_bytes=reserve_bytes).state(fresh=True).free_bytes
        if free_bytes is None
        else free_bytes
    )
    needed = 2 * before + reserve_bytes
    if free < needed:
        return _report(
            "no_space",
            old,
            old,
            before,
            before,
            started,
            f"{path} keeps its {old}-byte pages: repacking it needs {needed // 1024} KiB free "
            f"(twice its {before // 1024} KiB plus the {reserve_bytes // 1024} KiB reserve), "
            f"{free // 1024} KiB are",
        )
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=DELETE")  # leaving WAL: "database is locked" if shared
        conn.execute("BEGIN EXCLUSIVE")  # held until locking_mode=NORMAL: no one opens it meanwhile
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        _back_to_wal(conn)
        return _report(
            "busy",
            old,
            old,
            before,
            before,
            started,
            f"{path} keeps its {old}-byte pages: another process has it open ({exc}); stop every "
            "role and run `edge-agent storage repack`",
        )
    try:
        conn.execute("PRAGMA synchronous=FULL")  # the journal is synced before the file is overwritten
        conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("VACUUM")
    except sqlite3.Error as exc:  # SQLite rolled the VACUUM back: the file is as it was
        _back_to_wal(conn)
        return _report(
            "failed", old, old, before, _size(path), started, f"{path}: VACUUM failed, file unchanged: {exc}"
        )
    _back_to_wal(conn)
    try:
        new = int(conn.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.Error:
        new = page_size  # the VACUUM committed with it
    done = new == page_size
    return _report(
        "repacked" if done else "failed",
        old,
        new,
        before,
        _size(path),
        started,
        f"{path} repacked from {old}-byte to {new}-byte pages"
        if done
        else f"{path}: VACUUM kept {new}-byte pages (is {page_size} a page size SQLite takes?)",
    )


def _back_to_wal(conn: sqlite3.Connection) -> None:
    """Release the exclusive lock and return the file to WAL, as ``sqlitefile.connect`` leaves it
    (its other pragmas are per connection); a role's next ``connect`` does it if this cannot."""
    try:
        conn.execute("PRAGMA locking_mode=NORMAL")  # before WAL: else its index would live in heap
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        logger.warning("returning the database to WAL after a repack: %s", exc)


def _report(
    outcome: Outcome, old: int, new: int, before: int, after: int, started: float, message: str
) -> RepackReport:
    seconds = time.monotonic() - started
    report = RepackReport(outcome, old, new, before, after, seconds, message)
    if outcome == "repacked":
        logger.info("%s: %d -> %d KiB in %.2f s", message, before // 1024, after // 1024, seconds)
    else:
        logger.warning("%s", message)
    return report
