"""``cloud-sync db copy``: every row of one cloud database into another (SQLite -> PostgreSQL).

Both ends are opened as stores, so the target is created or migrated to the schema version
this release writes, and the source is migrated to it too (a source newer than this release
is refused). Tables are copied parents first (devices before results) in batches, each batch
one transaction, ``ON CONFLICT DO NOTHING`` (a copy interrupted and run again finishes the
job and stores nothing twice). Afterwards the row count of every table is compared; on
PostgreSQL the identity sequence of ``status_history`` is moved past the copied ids.
"""

from __future__ import annotations

from pathlib import Path

from cloud_sync.errors import InvalidRequest, StoreError
from cloud_sync.store import Store

# Parents before children (foreign keys); every table of the schema.
TABLES = (
    ("devices", "id"),
    ("status_history", "id"),
    ("telemetry", "device, ts"),
    ("results", "id"),
    ("commands", "id"),
    ("command_replies", "command_id"),
    ("models", "name"),
    ("model_versions", "model, version"),
    ("deployments", "id"),
    ("deployment_devices", "deployment, device"),
    ("model_bench", "device, model"),
    ("revoked_sessions", "nonce"),
    ("counters", "name"),
    ("rollouts", "id"),
    ("clock_corrections", "device, id"),
)


def copy_database(source: Path | str, target: Path | str, *, batch: int = 5000) -> dict[str, int]:
    """Copy every table; the rows per table in the target afterwards (equal to the source's)."""
    if batch < 1:
        raise InvalidRequest("--batch must be at least 1")
    if str(source) == str(target):
        raise InvalidRequest("--from and --to name the same database")
    src = Store(source)
    try:
        dst = Store(target)
        try:
            return _copy(src, dst, batch)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: Store, dst: Store, batch: int) -> dict[str, int]:
    known = src.table_names()
    missing = [t for t, _ in TABLES if t not in known]
    if missing:
        raise StoreError(f"{src.where} has no table {missing[0]!r}: not a cloud database")
    extra = sorted(known - {t for t, _ in TABLES} - {"schema_version", "sqlite_sequence"})
    if extra:
        raise InvalidRequest(
            f"{src.where} holds tables this copy does not know ({', '.join(extra)}); "
            "copy with the cloud_sync release that wrote them"
        )
    # An empty target, or one a copy of this source was interrupted in (no table holds more rows
    # than the source's): rows already there are skipped by key.
    ahead = [t for t, _ in TABLES if dst.count(t) > src.count(t)]
    if ahead:
        raise InvalidRequest(
            f"{dst.where} holds more {ahead[0]} rows than {src.where}: it is not an interrupted copy of it; "
            "copy into an empty database"
        )
    counts: dict[str, int] = {}
    for table, key in TABLES:
        columns = _columns(src, table)
        names = ", ".join(columns)
        insert = (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
        with src.reading() as reader:
            after: tuple[object, ...] | None = None
            keys = [k.strip() for k in key.split(",")]
            while True:
                where = ""
                params: list[object] = []
                if after is not None:
                    where = f"WHERE ({key}) > ({', '.join('?' * len(keys))})"
                    params = list(after)
                rows = reader.execute(
                    f"SELECT {names} FROM {table} {where} ORDER BY {key} LIMIT ?", [*params, batch]
                ).fetchall()
                if not rows:
                    break
                with dst.transaction() as writer:
                    writer.executemany(insert, [tuple(r) for r in rows])
                last = rows[-1]
                after = tuple(last[columns.index(k)] for k in keys)
        if dst.dialect == "postgresql" and table == "status_history":
            with dst.transaction() as writer:
                writer.execute(
                    "SELECT setval(pg_get_serial_sequence('status_history', 'id'), "
                    "coalesce((SELECT max(id) FROM status_history), 0) + 1, false)"
                )
        counts[table] = dst.count(table)
        expected = src.count(table)
        if counts[table] != expected:
            raise StoreError(f"{table}: {expected} rows in {src.where} but {counts[table]} in {dst.where}")
    return counts


def _columns(store: Store, table: str) -> list[str]:
    """The columns of a table in their declared order, from the source."""
    with store.reading() as db:
        if store.dialect == "sqlite":
            return [str(r["name"]) for r in db.query(f"PRAGMA table_info({table})")]
        return [
            str(r["column_name"])
            for r in db.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]
