"""The cloud database: the only owner of its schema, on one SQLite file or on PostgreSQL.

``Store(path)`` opens (and migrates) an SQLite file: WAL, ``synchronous=FULL``, writes take
the write lock up front. ``Store("postgresql://...")`` runs the same schema, migrations and
queries on PostgreSQL through psycopg 3 and a connection pool (``CLOUD_DB_URL``); several
ingest processes and API processes share it. A result acknowledged to a device survives a
power cut on both: the ingest acknowledges only after the commit, and the device deletes its
copy on the ack.

Idempotence is in the schema: a result's primary key is its id (a redelivered result is
stored once), status history is unique per (device, ts, state), telemetry per (device, ts),
a command has at most one reply.
"""

from __future__ import annotations

from pathlib import Path

from cloud_sync.store.base import BUSY_TIMEOUT_S, is_postgres_url
from cloud_sync.store.catalog import UNFINISHED_STATES, Catalog
from cloud_sync.store.clocks import PLAUSIBLE_AFTER, PLAUSIBLE_AHEAD_S
from cloud_sync.store.control import ControlPlane
from cloud_sync.store.fleet import FleetReads
from cloud_sync.store.pages import (
    JSON_COLUMNS,
    Page,
    ResultQuery,
    decode_cursor,
    encode_cursor,
    result_label,
)
from cloud_sync.store.schema import MIGRATIONS
from cloud_sync.store.writes import IngestWrites, result_time

__all__ = [
    "BUSY_TIMEOUT_S",
    "JSON_COLUMNS",
    "MIGRATIONS",
    "PLAUSIBLE_AFTER",
    "PLAUSIBLE_AHEAD_S",
    "UNFINISHED_STATES",
    "Page",
    "ResultQuery",
    "Store",
    "decode_cursor",
    "encode_cursor",
    "is_postgres_url",
    "result_label",
    "result_time",
]


class Store(IngestWrites, FleetReads, Catalog, ControlPlane):
    """The cloud database. Thread-safe: a connection per thread (SQLite) or from a pool (PostgreSQL)."""


def target_of(db_url: str | None, db_path: Path) -> Path | str:
    """What to open: the PostgreSQL URL when one is set, else the SQLite file."""
    return db_url if db_url else db_path
