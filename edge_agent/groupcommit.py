"""Group commit: writes from concurrent callers of one process in one transaction, one fsync.

Every page a transaction changes costs a whole page in the WAL (and an fsync), however few
bytes changed on it. Rows written by concurrent callers land on the same pages (the tail of
a table, the same index leaves), so committing them together divides those pages among
them. ``GroupCommit.run(fn)`` hands ``fn(conn)`` to one writer thread and returns its result
once the transaction holding it has committed: the durability promise is unchanged (a
caller answers its client only after its rows are on disk). The writer takes every write
queued while the previous commit ran, waiting at most ``window_s`` for more when it holds
fewer than ``max_group``.

Each write runs inside a savepoint: one that raises is undone alone and its caller gets the
error; the others commit. An error that ends the whole transaction (a full disk) goes to
every caller of the group, none of whose rows were committed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)


class Database(Protocol):
    """What group commit needs of the database (``storage.Storage`` is one; this module does
    not import it, so the two modules import in one direction only)."""

    def transaction(
        self, immediate: bool = True, *, what: str = "write"
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def translate(self, exc: BaseException, what: str, context: str = "storage error") -> Exception: ...

    def close_connection(self) -> None: ...


T = TypeVar("T")
DEFAULT_WINDOW_S = 0.005
DEFAULT_MAX_GROUP = 64

_Item = tuple[Callable[[sqlite3.Connection], Any], "Future[Any]", str]


class GroupCommit:
    def __init__(
        self, storage: Database, window_s: float = DEFAULT_WINDOW_S, max_group: int = DEFAULT_MAX_GROUP
    ) -> None:
        self.storage = storage
        self.window_s = window_s
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.groups = 0  # transactions committed (for tests and benchmarks)
        self.writes = 0

    def run(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> T:
        """``fn(conn)`` inside a shared transaction; its result once that transaction committed."""
        return self.submit(fn, what).result()

    def submit(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> Future[T]:
        fut: Future[T] = Future()
        self._ensure_thread()
        self._queue.put((fn, fut, what))
        return fut

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        try:
            while (first := self._queue.get()) is not None:
                group = [first]
                stop = self._collect(group)
                self._commit(group)
                if stop:
                    break
        finally:
            self.storage.close_connection()

    def _collect(self, group: list[_Item]) -> bool:
        deadline = time.monotonic() + self.window_s
        while len(group) < self.max_group:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    return False
            if item is None:
                return True
            group.append(item)
        return False

    def _commit(self, group: list[_Item]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        what = group[0][2] if len(group) == 1 else f"{group[0][2]} (and {len(group) - 1} more writes)"
        try:
            with self.storage.transaction(what=what) as conn:
                for fn, fut, item_what in group:
                    conn.execute("SAVEPOINT grouped")
                    try:
                        value = fn(conn)
                    except (EdgeAgentError, sqlite3.Error, ValueError) as exc:
                        if not conn.in_transaction:  # SQLite ended the whole transaction: all fail
                            raise
                        conn.execute("ROLLBACK TO grouped")
                        conn.execute("RELEASE grouped")
                        error: BaseException = (
                            self.storage.translate(exc, item_what) if isinstance(exc, sqlite3.Error) else exc
                        )
                        outcomes.append((fut, None, error))
                        continue
                    conn.execute("RELEASE grouped")
                    outcomes.append((fut, value, None))
        except BaseException as exc:  # the group did not commit: every caller gets why
            for _, fut, _ in group:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.groups += 1
        self.writes += len(group)
        for fut, value, failed in outcomes:
            if failed is not None:
                fut.set_exception(failed)
            else:
                fut.set_result(value)
