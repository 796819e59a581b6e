"""How both ends open an SQLite file and move its schema forward: the one copy.

The device's ``storage.py`` and the cloud's ``store.py`` each own their schema (their
migrations); this module owns what they share:

- ``connect``: WAL journal, ``synchronous=FULL`` (a commit survives a power cut: the
  device deletes its outbox copy on the cloud's ack, the cloud acks only after its
  commit), a busy timeout, foreign keys on, and no implicit transactions from the
  driver (callers say ``BEGIN IMMEDIATE`` themselves, so two writers never deadlock on
  a lock upgrade).
- ``migrate``: an append-only list of steps; step ``i`` moves the schema from version
  ``i`` to ``i + 1``. The version lives where a ``VersionStore`` says: SQLite's
  ``PRAGMA user_version`` here; a PostgreSQL store (issue 12) brings a store of its own
  (a one-row table) and the same steps keep working, since ``migrate`` never touches
  the database except through the step functions and the version store.

Errors stay ``sqlite3.Error`` and ``SchemaTooNewError`` (a ``ValueError``); each package
translates them into its own tree where it calls in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

H = TypeVar("H")  # what a migration step works on: a connection, or a library's wrapper of one


class SchemaTooNewError(ValueError):
    """The database was written by a newer release than this one knows."""

    def __init__(self, version: int, known: int) -> None:
        super().__init__(f"schema version {version} is newer than this release knows ({known})")
        self.version = version
        self.known = known


class VersionStore(Protocol):
    def read(self) -> int: ...

    def write(self, version: int) -> None: ...


class UserVersion:
    """The schema version in SQLite's ``PRAGMA user_version`` (in the file header, transactional)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def read(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def write(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version={int(version)}")


def connect(
    path: Path | str,
    *,
    busy_timeout_s: float,
    check_same_thread: bool = True,
    page_size: int | None = None,
    wal_autocheckpoint: int | None = None,
) -> sqlite3.Connection:
    """A connection set up as both ends want it (see the module docstring); ``sqlite3.Error``
    if the file cannot be opened or set up. ``page_size`` takes effect only when the file is
    created (it must come before WAL); ``wal_autocheckpoint`` is in pages."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        if page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        if wal_autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def migrate(handle: H, steps: Sequence[Callable[[H], None]], versions: VersionStore) -> int:
    """Apply the steps the database has not seen, recording each; the version reached.

    Call inside one write transaction, so a crash leaves the old schema or the new one."""
    version = versions.read()
    if version > len(steps):
        raise SchemaTooNewError(version, len(steps))
    for i in range(version, len(steps)):
        steps[i](handle)
        versions.write(i + 1)
    return len(steps)


def sql_script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step from SQL statements separated by ``;`` (run one by one, so they join the
    caller's transaction; ``executescript`` would commit it)."""

    def step(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return step
