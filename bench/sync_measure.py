"""Sync benchmark (bench/sync.py): the measurements: outbox drain rates, raw paho publishing, end-to-
end latency, recovery after a cloud outage, exactly-once delivery."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# -- measurements --------------------------------------------------------------------------------------
from bench.sync_cluster import CloudReader, Cluster, Device, Usage, encode_batches, record_result
from bench.sync_procs import (
    BATCHED,
    DEFAULTS,
    LATENCY_POLL_S,
    THROUGHPUT_POLL_S,
    WINDOW,
    BenchError,
    Budget,
    wait_for,
)
from edge_agent.storage import Storage
from edge_agent.sync.protocol import topic


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

    wait_for(
        f"{n} results of {dev.name} in the cloud store", stored, 30 + n / 50, lambda: cluster.check(proc)
    )
    seconds = time.perf_counter() - t0
    row.cpu.append(usage.end(cluster, proc))
    row.seconds.append(seconds)
    row.rates.append(n / seconds)
    row.results = n
    # the acks empty the outbox before the next drain starts (not timed)
    wait_for(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 30, lambda: None)


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
                record_result(scratch, conn, i)
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

        wait_for(f"{len(ids)} paced results of {dev.name}", all_seen, 30, lambda: cluster.check(proc))
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
    wait_for(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 30, lambda: None)


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
    wait_for(f"the outbox of {dev.name} to empty", lambda: dev.outbox_depth() == 0, 60, lambda: None)
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
