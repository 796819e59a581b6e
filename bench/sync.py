"""Sync benchmark: results from the device's outbox to the cloud store, over a real MQTT broker.

One table, measured in one run, everything on this machine over loopback: a real mosquitto on
a free port, the real cloud ingest role (``python -m cloud_sync.cli ingest``) storing into a
real SQLite file, and real device sync roles (``python -m edge_agent.cli --data-dir D sync``),
each draining its own device SQLite file that this script fills with ``Storage.record_result``.

* **results/s, outbox -> cloud store** for ``batch_size`` 100 (the default) and 500 versus 1
  (one message per result), every other setting at its default (window of 10 messages). N
  results are recorded in one transaction while the role is connected and idle; the clock runs
  from that commit until the cloud database holds all N (polled every 5 ms). Rounds alternate
  between the paths; the table shows the median and the range.
* **raw paho**: the same ``Results`` payload bytes (encoded as the outbox encodes them), QoS 1,
  published by this script with a window of 10 messages (paho's in-flight limit) and TCP_NODELAY
  like the device, until the broker has PUBACKed every one. No subscriber is connected then, so
  nothing is stored: it is the ceiling of the device -> broker hop.
* **end-to-end latency** p50 / p99: results recorded one per transaction at a steady rate; from
  the result's ``created`` (set by ``record_result``) until the row is visible in the cloud
  database (polled every 2 ms; the cloud keeps only the ingest's *arrival* time, ``received``,
  which is also reported). For raw paho: publish -> PUBACK of single-result messages.
* **recovery**: the ingest is stopped (cloud down), 10,000 results are recorded on the device,
  the ingest is started again; the time from its start until all 10,000 are stored, each once.

Target: batched sync (default ``batch_size``) at least 5x one message per result.

    .venv/bin/python bench/sync.py                 # about 2 minutes
    .venv/bin/python bench/sync.py --quick         # under a minute, rough numbers
    .venv/bin/python bench/sync.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

import edge_agent
from edge_agent.storage import OUTBOX_ROWS, Storage, envelope
from edge_agent.sync.protocol import ResultRecord, Results, encode, topic
from edge_agent.sync.settings import SyncConfig

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TARGET_RATIO = 5.0
DEFAULTS = SyncConfig()
WINDOW = DEFAULTS.max_inflight_messages  # the device's window; the raw publisher uses the same
BATCHED = DEFAULTS.batch_size
BIG_BATCH = 500
THROUGHPUT_POLL_S = 0.005
LATENCY_POLL_S = 0.002
START_TIMEOUT_S = 30.0
LABELS = ("setosa", "versicolor", "virginica")


@dataclass(frozen=True, slots=True)
class Budget:
    rounds: int  # drains per path, alternating between the paths
    batched: int  # results per drain, batch_size 100 and 500
    single: int  # results per drain, batch_size 1
    raw_repeat: int  # a raw burst publishes the batch-100 payloads of a batched drain this many times
    raw_single: int  # results per raw burst in single-result messages
    latency_s: float  # steady recording per latency path
    rate: float  # results/s recorded during the latency phase
    backlog: int  # results recorded while the cloud is down
    down_s: float  # how long the cloud stays down after the backlog is recorded
    ack_timeout_s: float | None  # the sync roles' ack_timeout_s (None: the default)


FULL = Budget(
    rounds=3,
    batched=30_000,
    single=1_500,
    raw_repeat=15,
    raw_single=10_000,
    latency_s=5.0,
    rate=100.0,
    backlog=10_000,
    down_s=3.0,
    ack_timeout_s=None,
)
QUICK = Budget(
    rounds=1,
    batched=2_000,
    single=150,
    raw_repeat=5,
    raw_single=1_000,
    latency_s=1.5,
    rate=100.0,
    backlog=1_000,
    down_s=1.0,
    ack_timeout_s=3.0,
)


class BenchError(RuntimeError):
    pass


# -- processes ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """This environment without the agent's and the cloud's settings (the script sets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_times(pid: int | str) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of a process, summed over its
    threads (``/proc/PID/task/*/schedstat``); without schedstat, CPU from ``/proc/PID/stat`` and
    no wait. (0, 0) once the process is gone."""
    cpu_ns = wait_ns = 0
    found = False
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                on_cpu, waiting, _ = (task / "schedstat").read_text().split()
                cpu_ns, wait_ns, found = cpu_ns + int(on_cpu), wait_ns + int(waiting), True
    if found:
        return cpu_ns / 1e9, wait_ns / 1e9
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, every core, from /proc/stat."""
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class Child:
    """A process this script started; its output goes to a log file. ``stop`` always ends it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def times(self) -> tuple[float, float]:
        return proc_times(self.proc.pid)

    def wait_log(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds since the start until ``needle`` appears in the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return time.perf_counter() - self.started
            self.check()
            time.sleep(0.02)
        raise BenchError(f"{self.name}: no {needle!r} in its log after {timeout_s:g} s:\n{self.tail()}")

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_broker(workdir: Path, nodelay: bool) -> tuple[Child, int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if nodelay:
        lines.append("set_tcp_nodelay true")
    conf.write_text("\n".join(lines) + "\n")
    broker = Child("mosquitto", [MOSQUITTO, "-c", str(conf)], _clean_env(), workdir / "mosquitto.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        broker.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return broker, port
        except OSError:
            time.sleep(0.05)
    broker.stop()
    raise BenchError("mosquitto did not start listening in 10 s")


# -- the cloud database, read by this script -----------------------------------------------------------
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
def _record(storage: Storage, conn: sqlite3.Connection, i: int) -> str:
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
        env = _clean_env() | {"EDGE_DEVICE_ID": self.name, "EDGE_SYNC__BATCH_SIZE": str(self.batch_size)}
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
            ids = [_record(self.storage, conn, self.recorded + i) for i in range(n)]
        self.recorded += n
        return ids

    def record_one(self) -> str:
        """One result in its own transaction, as a camera or worker role records it."""
        with self.storage.transaction() as conn:
            rid = _record(self.storage, conn, self.recorded)
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
        env = _clean_env() | {
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


# -- measurements --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Row:
    key: str
    path: str
    batch: int
    window: str
    results: int = 0
    seconds: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def median_cpu(self) -> dict[str, float]:
        keys = self.cpu[0].keys() if self.cpu else ()
        return {k: statistics.median(c[k] for c in self.cpu) for k in keys}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _wait(what: str, done: Callable[[], bool], timeout_s: float, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        check()
        time.sleep(THROUGHPUT_POLL_S)


def drain(cluster: Cluster, dev: Device, n: int, row: Row) -> None:
    """Record ``n`` results at once; time until the cloud database holds all of them."""
    reader = cluster.open_reader()
    proc = dev.proc
    reader.poll()
    target = reader.count(dev.name) + n
    dev.record_bulk(n)
    usage = Usage.begin(cluster, proc)
    t0 = time.perf_counter()

    def stored() -> bool:
        reader.poll()
        return reader.count(dev.name) >= target

    _wait(f"{n} results of {dev.name} in the cloud store", stored, 30 + n / 50, lambda: cluster.check(proc))
    seconds = time.perf_counter() - t0
    row.cpu.append(usage.end(cluster, proc))
    row.seconds.append(seconds)
    row.rates.append(n / seconds)
    row.results = n
    # the acks empty the outbox before the next drain starts (not timed)
    _wait(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 30, lambda: None)


class RawPublisher:
    """paho publishing QoS 1 to the broker like the device's link: MQTT 5, TCP_NODELAY, a window."""

    def __init__(self, port: int, window: int) -> None:
        self.acked = 0
        self.acked_at: dict[int, float] = {}
        self.expected = 0
        self.done = threading.Event()
        self.connected = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)  # no limit: paho holds what the window does not allow yet
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        self.client = client
        if not self.connected.wait(10):
            self.close()
            raise BenchError("raw publisher: no CONNACK in 10 s")

    @staticmethod
    def _on_socket_open(client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.acked_at[mid] = time.perf_counter()
        self.acked += 1
        if self.acked >= self.expected:
            self.done.set()

    def _reset(self, expected: int) -> None:
        self.acked = 0
        self.acked_at = {}
        self.expected = expected
        self.done.clear()

    def burst(self, topic_name: str, payloads: Sequence[bytes], timeout_s: float) -> float:
        """Publish every payload at once (paho keeps the window); seconds until all are PUBACKed."""
        self._reset(len(payloads))
        t0 = time.perf_counter()
        for payload in payloads:
            info = self.client.publish(topic_name, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise BenchError(f"raw publish failed: {paho.error_string(info.rc)}")
        if not self.done.wait(timeout_s):
            raise BenchError(f"raw publisher: {self.acked} of {len(payloads)} PUBACKs after {timeout_s:g} s")
        return time.perf_counter() - t0

    def paced(self, topic_name: str, payloads: Sequence[bytes], rate: float) -> list[float]:
        """One payload every 1/rate s; publish -> PUBACK time of each, in ms."""
        self._reset(len(payloads))
        sent_at: dict[int, float] = {}
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            before = time.perf_counter()
            info = self.client.publish(topic_name, payload, qos=1)
            sent_at[info.mid] = before
        if not self.done.wait(30):
            raise BenchError(f"raw publisher: {self.acked} of {len(payloads)} PUBACKs after 30 s")
        return [1000 * (self.acked_at[mid] - t) for mid, t in sent_at.items()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def raw_rows(cluster: Cluster, cfg: Budget) -> list[Row]:
    """The raw paho paths, while no ingest is subscribed (the broker routes to nobody)."""
    scratch = Storage.in_dir(cluster.workdir / "raw-device")
    name = "bench-raw"
    try:
        with scratch.transaction() as conn:
            for i in range(max(cfg.batched, cfg.raw_single)):
                _record(scratch, conn, i)
        batched = encode_batches(scratch, name, BATCHED)[: cfg.batched // BATCHED] * cfg.raw_repeat
        single = encode_batches(scratch, name, 1)[: cfg.raw_single]
    finally:
        scratch.close()
    rows = [
        Row(
            "raw_batched",
            f"raw paho publish -> broker PUBACK, batch-{BATCHED} payloads",
            BATCHED,
            "10 (paho)",
        ),
        Row("raw_single", "raw paho publish -> broker PUBACK, one-result payloads", 1, "10 (paho)"),
    ]
    rows[0].extra["payload_bytes"] = statistics.median(len(p) for p in batched)
    rows[1].extra["payload_bytes"] = statistics.median(len(p) for p in single)
    publisher = RawPublisher(cluster.port, WINDOW)
    dest = topic(name, "results")
    try:
        publisher.burst(dest, single[:50], 30)  # warm-up
        for _ in range(cfg.rounds):
            for row, payloads, n in (
                (rows[0], batched, len(batched) * BATCHED),
                (rows[1], single, len(single)),
            ):
                usage = Usage.begin(cluster, None)
                seconds = publisher.burst(dest, payloads, 60 + n / 100)
                row.cpu.append(usage.end(cluster, None))
                row.seconds.append(seconds)
                row.rates.append(n / seconds)
                row.results = n
        count = max(2, int(cfg.rate * cfg.latency_s))
        ms = publisher.paced(dest, single[:count], cfg.rate)
        rows[1].latency = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}
    finally:
        publisher.close()
    return rows


def latency(cluster: Cluster, dev: Device, cfg: Budget, row: Row) -> None:
    """Record one result per transaction at ``cfg.rate`` per s; created -> visible in the cloud DB."""
    reader = cluster.open_reader()
    proc = dev.proc
    reader.poll()
    reader.tracked[dev.name] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            reader.poll()
            time.sleep(LATENCY_POLL_S)

    watcher = threading.Thread(target=watch, name="cloud-watcher", daemon=True)
    watcher.start()
    ids: set[str] = set()
    try:
        count = max(2, int(cfg.rate * cfg.latency_s))
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / cfg.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ids.add(dev.record_one())
        recorded_s = time.perf_counter() - t0

        def all_seen() -> bool:
            with reader.lock:
                return len({s.id for s in reader.tracked[dev.name]} & ids) == len(ids)

        _wait(f"{len(ids)} paced results of {dev.name}", all_seen, 30, lambda: cluster.check(proc))
    finally:
        stop.set()
        watcher.join()
    seen = [s for s in reader.tracked.pop(dev.name) if s.id in ids]
    stored_ms = [1000 * (s.seen - s.created) for s in seen]
    received_ms = [1000 * (s.received - s.created) for s in seen]
    row.latency = {
        "p50_ms": percentile(stored_ms, 50),
        "p99_ms": percentile(stored_ms, 99),
        "received_p50_ms": percentile(received_ms, 50),
        "received_p99_ms": percentile(received_ms, 99),
        "n": len(seen),
        "rate_asked": cfg.rate,
        "rate_achieved": (len(ids) - 1) / recorded_s if recorded_s > 0 else 0.0,
    }
    _wait(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 30, lambda: None)


def recovery(cluster: Cluster, dev: Device, cfg: Budget) -> Row:
    """Cloud down, a backlog recorded, cloud up: time until every result is stored once."""
    row = Row(
        "recovery", f"recovery: {cfg.backlog:,}-result backlog, cloud down then up", dev.batch_size, "10"
    )
    reader = cluster.open_reader()
    proc = dev.proc
    cluster.stop_ingest()
    reader.poll()
    base = reader.count(dev.name)
    ids = dev.record_bulk(cfg.backlog)
    recorded_at = time.time()
    time.sleep(cfg.down_s)
    sent, first_sent, last_sent = dev.storage.conn.execute(
        "SELECT COUNT(*), MIN(last_sent), MAX(last_sent) FROM outbox WHERE last_sent IS NOT NULL"
    ).fetchone()
    usage = Usage.begin(cluster, proc)
    t_up, up_at = time.perf_counter(), time.time()
    ingest = cluster.start_ingest(wait=False)
    ready = first = None
    deadline = time.monotonic() + 120
    while reader.count(dev.name) < base + cfg.backlog:
        if time.monotonic() > deadline:
            raise BenchError(f"recovery: {reader.count(dev.name) - base} of {cfg.backlog} stored after 120 s")
        cluster.check(proc)
        now = time.perf_counter()
        if ready is None and "ready: subscribed" in ingest.text():
            ready = now - t_up
        if first is None and reader.count(dev.name) > base:
            first = now - t_up
        time.sleep(THROUGHPUT_POLL_S)
        reader.poll()
    total = time.perf_counter() - t_up
    row.cpu.append(usage.end(cluster, proc))
    _wait(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 60, lambda: None)
    acked_s = time.perf_counter() - t_up
    stats = cluster.stop_ingest()
    stored = distinct = 0
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        (c, d), *_ = reader.query(
            f"SELECT COUNT(*), COUNT(DISTINCT id) FROM results WHERE id IN ({marks})", chunk
        )
        stored, distinct = stored + c, distinct + d
    first_s = first if first is not None else total
    row.results = cfg.backlog
    row.seconds.append(total)
    row.rates.append(cfg.backlog / total)
    row.extra = {
        "down_s": cfg.down_s,
        "ack_timeout_s": cfg.ack_timeout_s or DEFAULTS.ack_timeout_s,
        "sent_while_down": int(sent),
        "sent_while_down_after_s": None if first_sent is None else first_sent - recorded_at,
        "last_sent_while_down_after_s": None if last_sent is None else last_sent - recorded_at,
        "first_stored_after_send_s": None if first_sent is None else up_at + first_s - first_sent,
        "ingest_ready_s": ready,
        "first_stored_s": first_s,
        "all_stored_s": total,
        "drain_after_first_s": total - first_s,
        "outbox_empty_s": acked_s,
        "stored": stored,
        "distinct": distinct,
        "missing": cfg.backlog - distinct,
        "duplicates": stored - distinct,
        "ingest_stats": stats,
        "deliveries_beyond_stored": (stats["results_acked"] - cfg.backlog) if stats else None,
    }
    return row


def exactly_once(reader: CloudReader, devices: Sequence[Device]) -> dict[str, dict[str, int]]:
    """Per device: recorded on the device vs stored in the cloud (missing, extra, duplicate rows)."""
    out: dict[str, dict[str, int]] = {}
    for dev in devices:
        local = {r[0] for r in dev.storage.conn.execute("SELECT id FROM results").fetchall()}
        rows = reader.query("SELECT id FROM results WHERE device = ?", (dev.name,))
        cloud = [r[0] for r in rows]
        out[dev.name] = {
            "recorded": len(local),
            "stored": len(cloud),
            "missing": len(local - set(cloud)),
            "extra": len(set(cloud) - local),
            "duplicates": len(cloud) - len(set(cloud)),
            "outbox_left": dev.outbox_depth(),
        }
    return out


# -- report --------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10, check=False)
        m = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
        mosquitto = m.group(1) if m else "unknown"
    except OSError:
        mosquitto = "not found"
    return {
        "python": platform.python_version(),
        "edge-agent": edge_agent.__version__,
        "mosquitto": mosquitto,
        "paho-mqtt": dist("paho-mqtt"),
        "pydantic": dist("pydantic"),
        "sqlite": sqlite3.sqlite_version,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def fsync_ms(directory: Path, count: int = 20) -> float:
    """Median time of a 4 KiB write + fsync in ``directory`` (both SQLite files live there)."""
    times = []
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(1000 * (time.perf_counter() - t0))
    finally:
        os.close(fd)
        os.unlink(name)
    return statistics.median(times)


def header_lines(argv: Sequence[str], v: dict[str, str]) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"command: {shlex.join([sys.executable, *argv])}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"CPUs: {os.cpu_count()} ({usable} usable), {cpu_model()}, {platform.machine()}",
        f"load average at start: {load_text()}",
    ]


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def table_lines(rows: Sequence[Row], single_rate: float) -> list[str]:
    head = [
        "path",
        "batch",
        "window",
        "results",
        "time s",
        "results/s",
        "× one-per-result",
        "e2e p50 ms",
        "e2e p99 ms",
        "CPU % dev·broker·cloud",
        "CPU wait % dev·broker·cloud",
        "machine busy %",
    ]
    body: list[list[str]] = []
    for r in rows:
        if r.error is not None or not r.rates:
            body.append([r.path, str(r.batch), r.window, *(["error"] * 9)])
            continue
        rate = _n(r.rate)
        if len(r.rates) > 1:
            rate += f" ({_n(min(r.rates))}-{_n(max(r.rates))})"
        cpu = r.median_cpu()
        raw = r.key.startswith("raw")

        def trio(suffix: str, cpu: dict[str, float] = cpu, raw: bool = raw) -> str:
            cloud = "-" if raw else f"{cpu['cloud' + suffix]:.0f}"
            return f"{cpu['dev' + suffix]:.0f} · {cpu['broker' + suffix]:.0f} · {cloud}"

        body.append(
            [
                r.path,
                str(r.batch),
                r.window,
                _n(r.results),
                f"{statistics.median(r.seconds):.2f}",
                rate,
                f"{r.rate / single_rate:.1f}×" if single_rate > 0 and r.key != "recovery" else "-",
                _ms(r.latency.get("p50_ms")),
                _ms(r.latency.get("p99_ms")),
                trio(""),
                trio("_wait"),
                f"{cpu['machine']:.0f}",
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    left = {0, 2}

    def fmt(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i in left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return [fmt(head), "| " + " | ".join(rule) + " |", *(fmt(b) for b in body)]


def footnotes(
    rows: Sequence[Row],
    cfg: Budget,
    quick: bool,
    once: dict[str, dict[str, int]],
    fsync: float,
    nodelay: bool,
) -> list[str]:
    by = {r.key: r for r in rows}
    rounds = f"{cfg.rounds} rounds, paths alternating; median (range)" if cfg.rounds > 1 else "1 round"
    ack = cfg.ack_timeout_s or DEFAULTS.ack_timeout_s
    lines = [
        "",
        f"Sync rows: the sync role as a process (`python -m edge_agent.cli sync`), defaults but `batch_size` "
        f"(window {WINDOW} messages, poll_interval_s {DEFAULTS.poll_interval_s:g}, ack_timeout_s {ack:g}"
        f"{' (--quick)' if cfg.ack_timeout_s else ''}), the cloud ingest role as a process "
        f"(`python -m cloud_sync.cli ingest`, defaults: synchronous=FULL, up to 64 messages per "
        f"transaction), mosquitto {'with' if nodelay else 'without'} `set_tcp_nodelay`, persistence off; "
        f"results of ~200 bytes. results/s = N / (commit of N results recorded at once on the device -> "
        f"all N rows in the cloud database, polled every {1000 * THROUGHPUT_POLL_S:g} ms; it includes the "
        f"up to poll_interval_s before the idle role looks at its outbox); {rounds}.",
        "Raw rows: this script publishes the same Results payload bytes (QoS 1, MQTT 5, TCP_NODELAY, "
        f"paho in-flight window {WINDOW}; the batch-{BATCHED} messages of one batched drain, "
        f"{cfg.raw_repeat} times over) to the same broker until every PUBACK is in; no subscriber is "
        "connected then, so nothing is forwarded or stored: the ceiling of the device -> broker hop. "
        "dev CPU = this script.",
        f"e2e: results recorded one per transaction at {cfg.rate:g}/s for {cfg.latency_s:g} s; `created` "
        f"(device clock, set in `record_result` before its commit) -> row visible in the cloud database "
        f"(polled every {1000 * LATENCY_POLL_S:g} ms, same clock). Raw: publish -> PUBACK of one-result "
        "messages at the same rate.",
    ]
    for key in ("b100", "b1"):
        r = by.get(key)
        if r is not None and r.latency:
            lat = r.latency
            lines.append(
                f"  {r.path}: created -> arrival at the ingest (its `received` column, before its commit) "
                f"p50 {_ms(lat['received_p50_ms'])} ms, p99 {_ms(lat['received_p99_ms'])} ms; "
                f"{lat['n']} results, recorded at {lat['rate_achieved']:.0f}/s."
            )
    lines.append(
        "CPU % = CPU time / wall time of the measured interval, per process, all its threads (100 = one "
        "core); CPU wait % = time its threads were runnable but waiting for a CPU (schedstat run-queue "
        "delay) / wall time: CPU taken by other processes, this machine's other work included. dev = the "
        "sync role (raw: this script), broker = mosquitto, cloud = the ingest role. machine busy % = all "
        f"cores, 100 = every core busy. fsync of a 4 KiB write here: {fsync:.1f} ms (median of 20)."
    )
    per_result = []
    for key in ("b100", "b500", "b1"):
        r = by.get(key)
        if r is not None and r.error is None and r.cpu:
            us = {
                role: statistics.median(
                    c[role] / 100 * t / r.results * 1e6 for c, t in zip(r.cpu, r.seconds, strict=True)
                )
                for role in ("dev", "cloud")
            }
            per_result.append(
                f"batch_size {r.batch}: sync role {us['dev']:.0f} µs, ingest {us['cloud']:.0f} µs"
            )
    if per_result:
        lines.append("CPU time per result (median): " + "; ".join(per_result) + ".")
    rec = by.get("recovery")
    if rec is not None and rec.error is None and rec.extra:
        x = rec.extra
        ready = "-" if x["ingest_ready_s"] is None else f"{x['ingest_ready_s']:.1f}"
        drain_s = x["drain_after_first_s"]
        drain = f": {cfg.backlog / drain_s:,.0f} results/s" if drain_s >= 0.1 else ""
        text = (
            f"Recovery: ingest stopped, {cfg.backlog:,} results recorded at once, cloud down "
            f"{cfg.down_s:g} s, ingest started. From its start: subscribed after {ready} s, first result "
            f"stored after {x['first_stored_s']:.1f} s, all {cfg.backlog:,} after {x['all_stored_s']:.1f} s "
            f"({drain_s:.1f} s from the first{drain}), outbox empty after {x['outbox_empty_s']:.1f} s."
        )
        if x["sent_while_down"] and x["first_stored_after_send_s"] is not None:
            text += (
                f" While the cloud was down the role sent {x['sent_while_down']:,} results (its window of "
                f"{WINDOW} messages); no ingest session held them, so the broker discarded them; the first "
                f"result was stored {x['first_stored_after_send_s']:.1f} s after that send (ack_timeout_s = "
                f"{x['ack_timeout_s']:g}: until then the window stays full and nothing is sent)."
            )
        text += (
            f" Stored {x['distinct']:,} of {cfg.backlog:,} ids: {x['missing']} missing, {x['duplicates']} "
            f"duplicate rows; results acknowledged by the ingest beyond those stored (re-deliveries): "
            f"{x['deliveries_beyond_stored']}."
        )
        lines.append(text)
    bad = {d: c for d, c in once.items() if c["missing"] or c["extra"] or c["duplicates"] or c["outbox_left"]}
    total = sum(c["recorded"] for c in once.values())
    if once and not bad:
        lines.append(
            f"Exactly once: all {total:,} results recorded on the benchmark's devices are in the cloud "
            "store once each (0 missing, 0 extra, 0 duplicate rows), and every outbox is empty."
        )
    for d, c in bad.items():
        lines.append(f"WARNING: {d}: {c}")
    if quick:
        lines.append("--quick: small N, one round, short ack_timeout_s: the numbers are rough.")
    for r in rows:
        if r.error is not None:
            lines.append(f"ERROR: {r.path}: {r.error}")
    return lines


def target_line(rows: Sequence[Row]) -> str:
    by = {r.key: r for r in rows}
    batched, single = by.get("b100"), by.get("b1")
    if batched is None or single is None or not batched.rates or not single.rates:
        return (
            f"target: batched (batch_size {BATCHED}) >= {TARGET_RATIO:g}x one message per result: "
            "not measured"
        )
    ratio = batched.rate / single.rate
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    return (
        f"target: batched sync (batch_size {BATCHED}) >= {TARGET_RATIO:g}x one message per result: {verdict} "
        f"({_n(batched.rate)} vs {_n(single.rate)} results/s = {ratio:.1f}x)"
    )


# -- main ----------------------------------------------------------------------------------------------
def run(
    cfg: Budget, workdir: Path, nodelay: bool, rows: list[Row], log: Callable[[str], None]
) -> dict[str, Any]:
    cluster = Cluster(workdir, nodelay)
    devices: list[Device] = []
    out: dict[str, Any] = {}
    try:
        cluster.start_broker()
        log("raw paho publish (no subscriber) ...")
        try:
            rows.extend(raw_rows(cluster, cfg))
        except Exception as exc:
            rows.append(
                Row("raw_batched", "raw paho publish -> broker PUBACK", BATCHED, "10", error=str(exc))
            )
        log("starting the ingest role and the sync roles ...")
        cluster.start_ingest()
        specs = (
            ("b100", f"sync: outbox -> cloud store, batched (default batch_size {BATCHED})", BATCHED),
            ("b500", f"sync: outbox -> cloud store, batched (batch_size {BIG_BATCH})", BIG_BATCH),
            ("b1", "sync: outbox -> cloud store, one message per result", 1),
        )
        for key, _, batch in specs:
            dev = Device(f"bench-{key}", batch, workdir)
            devices.append(dev)
            cluster.start_device(dev, cfg.ack_timeout_s)
        reader = cluster.open_reader()
        for dev in devices:
            assert dev.proc is not None
            dev.proc.wait_log("connected to the broker")

            def online(name: str = dev.name) -> bool:
                return bool(reader.query("SELECT 1 FROM devices WHERE id = ? AND online = 1", (name,)))

            _wait(f"the birth message of {dev.name}", online, START_TIMEOUT_S, cluster.check)
        sync_rows = {key: Row(key, path, batch, str(WINDOW)) for key, path, batch in specs}
        by_dev = dict(zip(sync_rows, devices, strict=True))
        for i in range(cfg.rounds):
            for key, row in sync_rows.items():
                if row.error is not None:
                    continue
                n = cfg.single if row.batch == 1 else cfg.batched
                log(f"round {i + 1}/{cfg.rounds}: {by_dev[key].name}, {n} results ...")
                try:
                    drain(cluster, by_dev[key], n, row)
                except BenchError as exc:
                    row.error = str(exc)
        for key in ("b100", "b1"):
            row = sync_rows[key]
            if row.error is None:
                log(f"latency: {by_dev[key].name} at {cfg.rate:g}/s for {cfg.latency_s:g} s ...")
                try:
                    latency(cluster, by_dev[key], cfg, row)
                except BenchError as exc:
                    row.error = str(exc)
        rows.extend(sync_rows.values())
        for key in ("b500", "b1"):  # idle now; the recovery runs with the default device only
            proc = by_dev[key].proc
            if proc is not None:
                proc.stop()
        log(f"recovery: {cfg.backlog} results while the cloud is down ...")
        try:
            rows.append(recovery(cluster, by_dev["b100"], cfg))
        except BenchError as exc:
            rows.append(Row("recovery", "recovery", BATCHED, str(WINDOW), error=str(exc)))
        out["exactly_once"] = exactly_once(reader, devices)
    finally:
        cluster.close()
        for dev in devices:
            dev.close()
    return out


ORDER = ("b100", "b500", "b1", "raw_batched", "raw_single", "recovery")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small N, one round (smoke test, < 60 s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--broker-nodelay", action="store_true", help="mosquitto with `set_tcp_nodelay true`")
    p.add_argument("--workdir", type=Path, help="keep the databases and logs here (default: a temp dir)")
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the clean-up
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: every process is stopped


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    v = versions()
    header = header_lines([sys.argv[0], *argv], v)
    print("\n".join(header), flush=True)
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
        fsync = fsync_ms(workdir)
        try:
            out = run(cfg, workdir, args.broker_nodelay, rows, log)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    rows.sort(key=lambda r: ORDER.index(r.key) if r.key in ORDER else len(ORDER))
    by = {r.key: r for r in rows}
    single = by["b1"].rate if "b1" in by else 0.0
    once = out.get("exactly_once", {})
    lines = [
        "",
        *table_lines(rows, single),
        *footnotes(rows, cfg, args.quick, once, fsync, args.broker_nodelay),
        "",
        target_line(rows),
        f"load average at end: {load_text()}",
    ]
    print("\n".join(lines), flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)
    failed = any(r.error is not None for r in rows) or any(
        c["missing"] or c["extra"] or c["duplicates"] for c in once.values()
    )
    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": v,
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "fsync_ms": fsync,
            "quick": args.quick,
            "broker_nodelay": args.broker_nodelay,
            "budget": asdict(cfg),
            "sync_defaults": {
                "batch_size": BATCHED,
                "max_inflight_messages": WINDOW,
                "poll_interval_s": DEFAULTS.poll_interval_s,
                "ack_timeout_s": DEFAULTS.ack_timeout_s,
            },
            "target_ratio": TARGET_RATIO,
            "target": target_line(rows),
            "elapsed_s": elapsed,
            "rows": [asdict(r) | {"rate_median": r.rate} for r in rows],
            "exactly_once": once,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
