"""Opening the cloud database, its transactions and its migrations (both backends)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cloud_sync.errors import NotFound, SchemaTooNew, StoreError, ValueRefused
from cloud_sync.store.backends import Backend, Conn, PostgresBackend, SqliteBackend
from cloud_sync.store.pages import decode_row
from cloud_sync.store.schema import MIGRATIONS, PgVersion, SqliteVersion
from edge_agent.sqlitefile import SchemaTooNewError, VersionStore, migrate

BUSY_TIMEOUT_S = 10.0
POOL_SIZE = 8
CONNECT_TIMEOUT_S = 10.0
PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(PG_SCHEMES)


class StoreBase:
    """Connections (one per thread on SQLite, a pool on PostgreSQL), transactions, migration.

    ``target`` is an SQLite file path or a ``postgresql://`` URL."""

    def __init__(
        self,
        target: Path | str,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        pool_size: int = POOL_SIZE,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.backend: Backend
        if is_postgres_url(target):
            self.path: Path | None = None
            try:
                self.backend = PostgresBackend(
                    str(target), pool_size=pool_size, connect_timeout_s=connect_timeout_s
                )
            except Exception as exc:  # the driver's and the pool's errors: nothing is open yet
                from cloud_sync.store.backends import redact_url

                raise StoreError(f"cannot connect to {redact_url(str(target))}: {exc}") from None
        else:
            self.path = Path(target)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
            self.backend = SqliteBackend(self.path, busy_timeout_s)
        self.dialect = self.backend.dialect
        self.where = self.backend.where
        self._local = threading.local()
        try:
            self._migrate()
        except BaseException:
            self.backend.close()
            raise

    # -- connections and transactions ------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self.backend.refused as exc:  # this value: retrying it cannot help
            raise ValueRefused(f"the database refused a value: {str(exc).strip()}") from None
        except self.backend.errors as exc:
            raise StoreError(f"database error: {str(exc).strip()}") from None

    @contextlib.contextmanager
    def transaction(self, sync: bool | None = None) -> Iterator[Conn]:
        """A write transaction; nested use becomes a savepoint that rolls back on its own.
        Committed when the outermost block ends (acknowledge only after that). A nested one with
        ``sync=False`` does not wait for the server (``Conn.savepoint``), nor do the ones nested in
        it (``None``: as the enclosing one; waited for at the top)."""
        active: Conn | None = getattr(self._local, "tx", None)
        if active is not None:
            outer: bool = getattr(self._local, "sync", True)
            mine = outer if sync is None else sync
            self._local.sync = mine
            try:
                with self._errors(), active.savepoint(mine):
                    yield active
            finally:
                self._local.sync = outer
            return
        with self._errors(), self.backend.begin() as conn:
            self._local.tx = conn
            try:
                yield conn
            finally:
                self._local.tx = None

    def _current(self) -> Conn | None:
        """The connection of this thread's transaction or snapshot, if it is in one."""
        active: Conn | None = getattr(self._local, "tx", None) or getattr(self._local, "snap", None)
        return active

    @contextlib.contextmanager
    def reading(self) -> Iterator[Conn]:
        """A connection to read with (the current transaction's or snapshot's, if this thread is in
        one)."""
        active = self._current()
        if active is not None:
            yield active
            return
        with self._errors(), self.backend.reader() as conn:
            yield conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """Reads that all see one state of the database (a read-only transaction), for a view built
        from several queries: never half before and half after a writer's commit. No writes in it."""
        active = self._current()
        if active is not None:
            yield active
            return
        with self._errors(), self.backend.snapshot() as conn:
            self._local.snap = conn
            try:
                yield conn
            finally:
                self._local.snap = None

    @property
    def db(self) -> Conn:
        """This thread's SQLite connection (SQLite only; PostgreSQL connections come from a pool)."""
        if isinstance(self.backend, SqliteBackend):
            return self.backend.conn()
        raise StoreError("store.db is SQLite only: use store.transaction() or store.reading()")

    def close(self) -> None:
        self.backend.close()

    def _migrate(self) -> None:
        try:
            with self.transaction() as conn:
                pg = self.dialect == "postgresql"
                versions: VersionStore = PgVersion(conn) if pg else SqliteVersion(conn)
                migrate(conn, MIGRATIONS, versions)
        except SchemaTooNewError as exc:
            raise SchemaTooNew(
                f"{self.where} has schema version {exc.version}, newer than this cloud_sync knows "
                f"({exc.known}); upgrade cloud_sync"
            ) from None
        except StoreError as exc:
            raise StoreError(f"cannot migrate {self.where}: {exc.message}") from None

    @property
    def schema_version(self) -> int:
        with self.reading() as conn:
            if self.dialect == "postgresql":
                return PgVersion.read_only(conn)
            return SqliteVersion(conn).read()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.reading() as conn:
            return [decode_row(row) for row in conn.query(sql, list(params))]

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.reading() as conn:
            row = conn.execute(sql, list(params)).fetchone()
        return None if row is None else row[0]

    def explain(self, sql: str, params: Sequence[Any] = (), *, seqscan: bool = True) -> str:
        """The database's query plan for ``sql`` (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN).
        ``seqscan=False`` asks PostgreSQL for its plan with table scans priced out: whether an
        index can serve the query at all, on a table too small for the planner to want one."""
        prefix = "EXPLAIN QUERY PLAN " if self.dialect == "sqlite" else "EXPLAIN "
        with self.transaction() as conn:
            if not seqscan and self.dialect == "postgresql":
                conn.execute("SET LOCAL enable_seqscan = off")
            rows = conn.execute(prefix + sql, list(params)).fetchall()
        return "\n".join(str(r[-1]) for r in rows)

    def analyze(self) -> None:
        """Refresh the planner's statistics (PostgreSQL autovacuum does it too, later)."""
        with self.transaction() as conn:
            conn.execute("ANALYZE")

    def table_names(self) -> set[str]:
        with self.reading() as conn:
            return self.backend.table_names(conn)

    def count(self, table: str) -> int:
        if table not in self.table_names():
            raise NotFound(f"no table {table!r}")
        return int(self._scalar(f"SELECT count(*) FROM {table}"))
