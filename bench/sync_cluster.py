"""Sync benchmark (bench/sync.py): the cluster, a broker, the cloud ingest and its database (read by
this script) and the devices whose outboxes it fills."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- the cloud database, read by this script -----------------------------------------------------------
from bench.sync_procs import LABELS, BenchError, Child, clean_env, machine_ticks, proc_times, start_broker
from edge_agent.storage import OUTBOX_ROWS, Storage, envelope
from edge_agent.sync.protocol import ResultRecord, Results, encode


@dataclass(frozen=True, slots=True)
class Seen:
    id: str
    created: float
    received: float
    seen: float  # time.time() of the poll that first returned the row


class CloudReader:
    """Reads new rows of the cloud's ``results`` table by rowid (rows are only ever inserted)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, timeout=10, check_same_thread=False)
        self.lock = threading.Lock()
        self.last_rowid = 0
        self.counts: dict[str, int] = {}
        self.tracked: dict[str, list[Seen]] = {}

    def poll(self) -> None:
        with self.lock:
            rows = self.conn.execute(
                "SELECT rowid, device, id, created, received FROM results WHERE rowid > ? ORDER BY rowid",
                (self.last_rowid,),
            ).fetchall()
            now = time.time()
            for _rowid, device, rid, created, received in rows:
                self.counts[device] = self.counts.get(device, 0) + 1
                if device in self.tracked:
                    self.tracked[device].append(Seen(rid, created, received, now))
            if rows:
                self.last_rowid = rows[-1][0]

    def count(self, device: str) -> int:
        return self.counts.get(device, 0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


# -- the device ----------------------------------------------------------------------------------------
def record_result(storage: Storage, conn: sqlite3.Connection, i: int) -> str:
    body = {"label": LABELS[i % 3], "score": round(0.5 + (i % 50) / 100, 2), "latency_ms": 1.25}
    return storage.record_result(conn, source="bench", model="iris", version="1", body=body, ref=f"frame-{i}")


class Device:
    """One device: its data directory, its SQLite file, and its sync role process."""

    def __init__(self, name: str, batch_size: int, workdir: Path) -> None:
        self.name = name
        self.batch_size = batch_size
        self.data_dir = workdir / name
        self.model_dir = workdir / "empty-model-store"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.storage = Storage.in_dir(self.data_dir)  # created (migrated) before the role opens it
        self.recorded = 0
        self.proc: Child | None = None

    def start(self, port: int, ack_timeout_s: float | None) -> Child:
        env = clean_env() | {"EDGE_DEVICE_ID": self.name, "EDGE_SYNC__BATCH_SIZE": str(self.batch_size)}
        if ack_timeout_s is not None:
            env["EDGE_SYNC__ACK_TIMEOUT_S"] = f"{ack_timeout_s:g}"
        argv = [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "--data-dir",
            str(self.data_dir),
            "--model-dir",
            str(self.model_dir),
            "sync",
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(port),
        ]
        self.proc = Child(f"sync role {self.name}", argv, env, self.data_dir / "sync.log")
        return self.proc

    def record_bulk(self, n: int) -> list[str]:
        """``n`` results and their outbox rows in one transaction (a backlog appearing at once)."""
        with self.storage.transaction() as conn:
            ids = [record_result(self.storage, conn, self.recorded + i) for i in range(n)]
        self.recorded += n
        return ids

    def record_one(self) -> str:
        """One result in its own transaction, as a camera or worker role records it."""
        with self.storage.transaction() as conn:
            rid = record_result(self.storage, conn, self.recorded)
        self.recorded += 1
        return rid

    def outbox_depth(self) -> int:
        return self.storage.outbox_depth()

    def close(self) -> None:
        self.storage.close()


def encode_batches(storage: Storage, device: str, size: int) -> list[bytes]:
    """The outbox's rows as ``Results`` messages of ``size`` results, encoded as the outbox does."""
    rows = storage.conn.execute(f"{OUTBOX_ROWS} WHERE o.kind = 'result' ORDER BY o.seq").fetchall()
    records = [ResultRecord.model_validate(envelope(r)) for r in rows]
    return [
        encode(Results(device=device, batch=uuid.uuid4().hex, results=records[i : i + size]))
        for i in range(0, len(records), size)
    ]


# -- the cluster ---------------------------------------------------------------------------------------
class Cluster:
    """Broker, ingest and sync roles; every process started is stopped by ``close`` (always called)."""

    def __init__(self, workdir: Path, nodelay: bool) -> None:
        self.workdir = workdir
        self.nodelay = nodelay
        self.children: list[Child] = []
        self.broker: Child | None = None
        self.port = 0
        self.db = workdir / "cloud" / "cloud.sqlite3"
        self.ingest: Child | None = None
        self.ingest_starts = 0
        self.reader: CloudReader | None = None

    def start_broker(self) -> None:
        self.broker, self.port = start_broker(self.workdir, self.nodelay)
        self.children.append(self.broker)

    def start_ingest(self, wait: bool = True) -> Child:
        self.ingest_starts += 1
        name = f"bench-ingest-{self.ingest_starts}"
        env = clean_env() | {
            "CLOUD_BROKER_HOST": "127.0.0.1",
            "CLOUD_BROKER_PORT": str(self.port),
            "CLOUD_DB_PATH": str(self.db),
            "CLOUD_INGEST_CLIENT_ID": name,
        }
        argv = [sys.executable, "-m", "cloud_sync.cli", "ingest"]
        self.db.parent.mkdir(parents=True, exist_ok=True)
        child = Child(f"ingest {name}", argv, env, self.db.parent / f"{name}.log")
        self.children.append(child)
        self.ingest = child
        if wait:
            child.wait_log("ready: subscribed")
        return child

    def stop_ingest(self) -> dict[str, int]:
        """Stop the ingest role; its final statistics (messages, results acked, ...)."""
        assert self.ingest is not None
        child, self.ingest = self.ingest, None
        code = child.stop()
        if code != 0:
            raise BenchError(f"{child.name} exited with {code}:\n{child.tail()}")
        m = re.search(
            r"stopped: (\d+) messages in (\d+) transactions, (\d+) rejected, (\d+) results acked",
            child.text(),
        )
        if m is None:
            return {}
        keys = ("messages", "transactions", "rejected", "results_acked")
        return dict(zip(keys, (int(g) for g in m.groups()), strict=True))

    def open_reader(self) -> CloudReader:
        if self.reader is None:
            self.reader = CloudReader(self.db)
        return self.reader

    def start_device(self, device: Device, ack_timeout_s: float | None) -> None:
        self.children.append(device.start(self.port, ack_timeout_s))

    def check(self, *extra: Child | None) -> None:
        for child in (self.broker, self.ingest, *extra):
            if child is not None:
                child.check()

    def times(self, dev: Child | None) -> dict[str, tuple[float, float]]:
        """(CPU s, run-queue wait s) so far of: the device side (its sync role, else this script),
        the broker, the ingest, and this script."""
        none = (0.0, 0.0)
        return {
            "dev": dev.times() if dev is not None else proc_times("self"),
            "broker": self.broker.times() if self.broker is not None else none,
            "cloud": self.ingest.times() if self.ingest is not None else none,
            "bench": proc_times("self"),
        }

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        for child in reversed(self.children):  # sync roles, then the ingest, then the broker
            with contextlib.suppress(Exception):
                child.stop()


@dataclass(slots=True)
class Usage:
    """CPU use and run-queue wait over a measured interval, in % of the wall time per process
    (100 = one core busy, or one thread always waiting for a CPU), and the whole machine's."""

    start: dict[str, tuple[float, float]]
    ticks: tuple[int, int]
    wall0: float

    @classmethod
    def begin(cls, cluster: Cluster, dev: Child | None) -> Usage:
        return cls(cluster.times(dev), machine_ticks(), time.perf_counter())

    def end(self, cluster: Cluster, dev: Child | None) -> dict[str, float]:
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        now, (busy, total) = cluster.times(dev), machine_ticks()
        out: dict[str, float] = {}
        for k, (cpu, wait) in now.items():
            cpu0, wait0 = self.start.get(k, (0.0, 0.0))
            out[k] = 100 * (cpu - cpu0) / wall
            out[f"{k}_wait"] = 100 * (wait - wait0) / wall
        out["machine"] = 100 * (busy - self.ticks[0]) / max(total - self.ticks[1], 1)
        return out
