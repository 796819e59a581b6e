"""Ingest failover: several ingest processes on one PostgreSQL, one SIGKILLed while results flow.

Simulated devices (paho, MQTT 5) each keep an outbox as the device agent does: a results batch
stays in it until the cloud's ``ResultsAck`` names its ids, and unacknowledged batches are sent
again every ``resend_s``. The ingest processes share the devices' messages through an MQTT 5
shared subscription (``--shared``). One of them is killed with SIGKILL once it has stored part
of the stream: what it held unacknowledged is lost with it, the devices re-send it, the other
ingest stores it. Used by tests/cloud/test_failover.py (5,000 results) and bench/ingest_failover.py
(50,000, the documented run).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tests.cloud import SimDevice, query, result_record, results_msg, start_ingest, wait_for
from tests.conftest import CloudDb
from tests.sync.broker import Broker


@dataclass
class FailoverRun:
    results: int
    stored: int = 0
    distinct: int = 0
    acked: int = 0
    resent_batches: int = 0
    by_ingest: dict[str, int] = field(default_factory=dict)
    killed_after: int = 0  # results the killed ingest had stored when it was killed
    seconds: float = 0.0
    missing: set[str] = field(default_factory=set)


class OutboxDevice(threading.Thread):
    """Publishes its results in batches, paced; re-sends what is not acknowledged."""

    def __init__(
        self, broker: Broker, name: str, results: int, batch: int, pace_s: float, resend_s: float
    ) -> None:
        super().__init__(name=f"sim-{name}", daemon=True)
        self.sim = SimDevice(broker, name)
        self.batches = [
            results_msg(name, [result_record() for _ in range(min(batch, results - i))])
            for i in range(0, results, batch)
        ]
        self.ids = {r.id for b in self.batches for r in b.results}
        self.pace_s, self.resend_s = pace_s, resend_s
        self.resent = 0
        self.stop = threading.Event()

    def unacked(self) -> list[int]:
        acked = self.sim.acked_ids()
        return [i for i, b in enumerate(self.batches) if any(r.id not in acked for r in b.results)]

    def run(self) -> None:
        for b in self.batches:
            if self.stop.is_set():
                return
            self.sim.publish(b, "results")
            time.sleep(self.pace_s)
        while not self.stop.wait(self.resend_s):
            for i in self.unacked():  # the outbox: everything not acknowledged yet goes again
                self.sim.publish(self.batches[i], "results")
                self.resent += 1

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.sim.close()


def run_failover(
    broker: Broker,
    db: CloudDb,
    workdir: Path,
    *,
    results: int = 5000,
    devices: int = 20,
    batch: int = 25,
    stream_s: float = 6.0,
    kill_at: float = 0.3,
    hang_s: float = 1.0,
    timeout_s: float = 120.0,
) -> FailoverRun:
    """Two shared ingest processes; the first SIGKILLed once it has stored ``kill_at`` of its share."""
    run = FailoverRun(results)
    per_device = results // devices
    messages = -(-per_device // batch)
    pace = stream_s / messages
    started = time.monotonic()
    with ExitStack() as stack:
        a = start_ingest(broker, db, workdir, "ingest-a", "--shared")
        stack.callback(a.stop)
        b = start_ingest(broker, db, workdir, "ingest-b", "--shared")
        stack.callback(b.stop)
        sims = [OutboxDevice(broker, f"fo-{i:04d}", per_device, batch, pace, 2.0) for i in range(devices)]
        for sim in sims:
            stack.callback(sim.close)
        expected = set().union(*(s.ids for s in sims))
        for sim in sims:
            sim.start()

        def stored_by_a() -> int:
            return int(query(db, "SELECT count(*) FROM results WHERE ingest = 'ingest-a'")[0][0])

        threshold = int(len(expected) / 2 * kill_at)
        wait_for(lambda: stored_by_a() >= threshold, timeout_s, "ingest-a to store part of the stream")
        # hung first (the broker keeps handing it its share, unacknowledged), then killed: no clean
        # stop, and what it held unacknowledged dies with it
        a.proc.send_signal(signal.SIGSTOP)
        time.sleep(hang_s)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        run.killed_after = stored_by_a()
        assert b.alive, "the surviving ingest died"
        wait_for(lambda: all(not s.unacked() for s in sims), timeout_s, "every result acknowledged")
        run.seconds = time.monotonic() - started
        run.acked = sum(len(s.sim.acked_ids() & s.ids) for s in sims)
        run.resent_batches = sum(s.resent for s in sims)
    run.stored, run.distinct = query(db, "SELECT count(*), count(DISTINCT id) FROM results")[0]
    run.by_ingest = dict(query(db, "SELECT ingest, count(*) FROM results GROUP BY ingest"))
    stored_ids = {r for (r,) in query(db, "SELECT id FROM results")}
    run.missing = expected - stored_ids
    run.results = len(expected)
    return run
