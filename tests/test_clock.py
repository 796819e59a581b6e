"""No real-time clock: `edge-agent up` started under libfaketime with its clock set back to 2001
(before the agent was built), then the clock jumps to the real time, as when NTP answers."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx

from edge_agent.clock import BUILD_EPOCH, clock_trust
from edge_agent.storage import DB_NAME, OUTBOX_ROWS, envelope
from tests.conftest import copy_models
from tests.device import Device, running, wait_for

# The clock is injected into the real role processes by a sitecustomize module that shifts
# time.time(): libfaketime also fakes the monotonic clock Python's timed waits use (a lock wait
# then never ends), and with FAKETIME_DONT_FAKE_MONOTONIC its clock_nanosleep fails (EINVAL).
SITECUSTOMIZE = """
import os, time
_real_time, _real_ns = time.time, time.time_ns
_offset = float(os.environ["TEST_CLOCK_OFFSET_S"])
time.time = lambda: _real_time() + _offset
time.time_ns = lambda: _real_ns() + int(_offset * 1e9)
"""


def test_the_real_clock_is_trusted_and_timesyncd_is_waited_for(tmp_path: Path) -> None:
    assert time.time() > BUILD_EPOCH and clock_trust(tmp_path / "no-timesyncd").trusted
    waiting = tmp_path / "timesync"
    waiting.mkdir()
    trust = clock_trust(waiting)
    assert not trust.trusted and "not synchronised" in trust.reason
    (waiting / "synchronized").touch()
    assert clock_trust(waiting).trusted


def test_results_recorded_before_ntp_are_marked_ordered_and_corrected(tmp_path: Path) -> None:
    """Started with the clock in 2001; then started again on the real clock, as after NTP set it
    (same boot): the gateway's keeper corrects the times from seconds-since-boot."""
    inject = tmp_path / "clock"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    roles = {"EDGE_UP__ROLES": json.dumps(["serve", "worker"])}
    back_to_2001 = str(978_307_200 - time.time())
    faked = {**roles, "PYTHONPATH": str(inject), "TEST_CLOCK_OFFSET_S": back_to_2001}
    models = copy_models(tmp_path / "models", ["iris"])
    data = tmp_path / "data"
    t0 = time.time()
    with running(Device(models, data, faked, tmp_path / "up.log")) as dev:
        jobs = []
        for i in range(6):
            r = httpx.post(f"{dev.url}/async/iris", json={"data": [[5.0 + i / 10, 3.4, 1.5, 0.2]]})
            assert r.status_code == 202, r.text  # nothing refuses to run because of the clock
            jobs.append(r.json()["job_id"])
        wait_for(
            lambda: all(httpx.get(f"{dev.url}/jobs/{j}").json()["status"] == "done" for j in jobs), 60, "jobs"
        )
    t1 = time.time()
    with sqlite3.connect(data / DB_NAME) as conn:
        rows = conn.execute("SELECT id, created, clock FROM results ORDER BY rowid").fetchall()
    assert [r[0] for r in rows] == jobs  # the sequence keeps their order, whatever the clock
    assert all(r[2] == "unsynced" and r[1] < 1_000_000_000 for r in rows), rows  # 2001

    with running(Device(models, data, roles, tmp_path / "up2.log")):  # the real clock now
        wait_for(lambda: _clocks(data) == {"corrected"}, 30, "the times to be corrected")
    with sqlite3.connect(data / DB_NAME) as conn:
        conn.row_factory = sqlite3.Row
        fixed = conn.execute(f"{OUTBOX_ROWS} ORDER BY r.rowid").fetchall()
    docs = [envelope(row) for row in fixed]
    assert [d["id"] for d in docs] == jobs  # type: ignore[index]
    seqs = [d["seq"] for d in docs]  # type: ignore[index]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    created = [d["created"] for d in docs]  # type: ignore[index]
    # recorded during the first run, in real time (/proc/uptime has 10 ms steps: 0.05 s slack)
    assert all(t0 - 0.05 <= c <= t1 + 0.05 for c in created), (t0, created, t1)
    assert created == sorted(created)
    assert all(d["clock"] == "corrected" for d in docs)  # type: ignore[index]


def _clocks(data: Path) -> set[str]:
    with sqlite3.connect(data / DB_NAME) as conn:
        return {r[0] for r in conn.execute("SELECT clock FROM results")}
