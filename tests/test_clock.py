"""No real-time clock: `edge-agent up` started with its clock set back to 2001 (before the agent
was built), then the clock jumps to the real time, as when NTP answers: across a restart, and while
every role runs (with the sync role delivering to a real mosquitto and cloud ingest)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.fleet import BIN, MOSQUITTO, Fleet
from edge_agent.clock import BUILD_EPOCH, boot_seconds, clock_trust
from edge_agent.storage import DB_NAME, OUTBOX_ROWS, envelope
from tests.cloud import query
from tests.conftest import CloudDb, PgUrl, copy_models, make_cloud_db
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

# The same, with the offset read from a file on every call: the test moves the clock of the running
# processes (an NTP step) by rewriting the file. (libfaketime's FAKETIME_TIMESTAMP_FILE would do it
# too, but it hangs the gateway, above.)
SITECUSTOMIZE_FILE = """
import os, time
_real_time, _real_ns, _path = time.time, time.time_ns, os.environ["TEST_CLOCK_OFFSET_FILE"]
_last = [None, 0.0]
def _offset():
    try:
        key = os.stat(_path).st_mtime_ns
        if key != _last[0]:
            with open(_path) as f:
                _last[1] = float(f.read())
            _last[0] = key
    except (OSError, ValueError):
        pass
    return _last[1]
time.time = lambda: _real_time() + _offset()
time.time_ns = lambda: _real_ns() + int(_offset() * 1e9)
"""
YEAR_2001 = 978_307_200


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
        fixed = conn.execute(f"{OUTBOX_ROWS} WHERE o.kind = 'result' ORDER BY r.rowid").fetchall()
        waiting = conn.execute("SELECT body FROM clock_corrections").fetchall()
    # the correction for the cloud was queued in the same transaction
    (queued,) = [json.loads(b) for (b,) in waiting]
    assert (queued["count"], queued["last_seq"] - queued["first_seq"]) == (6, 5)
    assert queued["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert abs(queued["boot_time"] - (time.time() - boot_seconds())) < 1.0 and t1 <= queued["ts"]
    docs = [envelope(row) for row in fixed]
    assert [d["id"] for d in docs] == jobs  # type: ignore[index]
    seqs = [d["seq"] for d in docs]  # type: ignore[index]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    created = [d["created"] for d in docs]  # type: ignore[index]
    # recorded during the first run, in real time (/proc/uptime has 10 ms steps: 0.05 s slack)
    assert all(t0 - 0.05 <= c <= t1 + 0.05 for c in created), (t0, created, t1)
    assert created == sorted(created)
    assert all(d["clock"] == "corrected" for d in docs)  # type: ignore[index]


def _outbox_kinds(data: Path) -> set[str]:
    """What waits for the cloud: the outbox's kinds, and "clock" while a correction is queued."""
    with sqlite3.connect(data / DB_NAME) as conn:
        kinds = {r[0] for r in conn.execute("SELECT kind FROM outbox")}
        clock = conn.execute("SELECT count(*) FROM clock_corrections").fetchone()[0]
    return kinds | ({"clock"} if clock else set())


def _clocks(data: Path) -> set[str]:
    with sqlite3.connect(data / DB_NAME) as conn:
        return {r[0] for r in conn.execute("SELECT clock FROM results")}


def _post_jobs(url: str, n: int) -> list[str]:
    jobs = []
    for i in range(n):
        r = httpx.post(f"{url}/async/iris", json={"data": [[5.0 + i / 10, 3.4, 1.5, 0.2]]})
        assert r.status_code == 202, r.text  # nothing refuses to run because of the clock
        jobs.append(r.json()["job_id"])
    wait_for(lambda: all(httpx.get(f"{url}/jobs/{j}").json()["status"] == "done" for j in jobs), 60, "jobs")
    return jobs


def _cloud_rows(db: CloudDb, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """id -> (created, received, time_flag, device_created, seq, time_corrected)."""
    marks = ",".join("?" * len(ids))
    rows = query(
        db,
        "SELECT id, created, received, time_flag, device_created, seq, time_corrected FROM results "
        f"WHERE id IN ({marks})",
        *ids,
    )
    return {r[0]: tuple(r[1:]) for r in rows}


@dataclass
class ClockFleet:
    """mosquitto + the cloud (ingest, API) + one `edge-agent up` (serve, worker, sync) whose clock
    is read from ``offset_file`` (an offset from the real time, in seconds)."""

    fleet: Fleet
    cloud_db: CloudDb
    dev: Device
    offset_file: Path


@contextmanager
def clock_fleet(tmp_path: Path, request: pytest.FixtureRequest, db_backend: str) -> Iterator[ClockFleet]:
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make setup mosquitto`"
    inject = tmp_path / "clock"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE_FILE)
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text(str(YEAR_2001 - time.time()))
    work = tmp_path / "fleet"
    (work / "logs").mkdir(parents=True)
    fleet = Fleet(work, devices=())
    cloud_db = make_cloud_db(request, db_backend, work / "cloud")
    if isinstance(cloud_db, PgUrl):
        fleet.cloud_env["CLOUD_DB_URL"] = str(cloud_db)
    try:
        fleet.start_broker()
        fleet.start_cloud()
        env = {
            "EDGE_DEVICE_ID": "clock-1",
            "EDGE_UP__ROLES": json.dumps(["serve", "worker", "sync"]),
            "EDGE_SYNC__BROKER_HOST": "127.0.0.1",
            "EDGE_SYNC__BROKER_PORT": str(fleet.broker_port),
            "EDGE_SYNC__TRUSTED_KEYS": str(work / "cloud" / "signing.pub.pem"),
            "EDGE_SYNC__ARTIFACT_BASE_URL": fleet.api,
            "PYTHONPATH": str(inject),
            "TEST_CLOCK_OFFSET_FILE": str(offset_file),
        }
        data = tmp_path / "data"
        dev = Device(copy_models(tmp_path / "models", ["iris"]), data, env, tmp_path / "up.log")
        yield ClockFleet(fleet, cloud_db, dev, offset_file)
    finally:
        fleet.stop_all()


def test_the_clock_jumps_while_every_role_runs(
    tmp_path: Path, request: pytest.FixtureRequest, db_backend: str
) -> None:
    """`edge-agent up` (gateway, worker, sync to a real mosquitto and cloud) runs in 2001; results
    are marked unsynced and delivered (the cloud flags them and stores its receive time); then the
    clock steps to the real time in the running processes: the device corrects its times without a
    restart and sends the correction, the cloud gives the delivered results the same times (device
    time and flag kept visible); later results are unmarked and ordered after them by their
    sequence. The cloud on SQLite and on PostgreSQL."""
    with clock_fleet(tmp_path, request, db_backend) as cf:
        fleet, cloud_db, dev, offset_file, data = cf.fleet, cf.cloud_db, cf.dev, cf.offset_file, cf.dev.data
        with running(dev):
            status = httpx.get(f"{dev.url}/v2/health/ready")
            assert status.status_code == 200  # serving in 2001
            before = _post_jobs(dev.url, 4)
            t0 = time.time()
            wait_for(lambda: len(_cloud_rows(cloud_db, before)) == 4, 60, "the 2001 results in the cloud")
            assert _clocks(data) == {"unsynced"}
            with sqlite3.connect(data / DB_NAME) as conn:
                assert all(c < 1_000_000_000 for (c,) in conn.execute("SELECT created FROM results"))
            flagged = _cloud_rows(cloud_db, before)
            for created, received, flag, device_created, _, _ in flagged.values():
                assert flag == "unsynced" and created == received >= t0 - 60  # stored as received
                assert device_created is not None and device_created < 1_000_000_000  # kept beside
            assert [flagged[j][4] for j in before] == sorted(flagged[j][4] for j in before)

            t_jump = time.time()
            offset_file.write_text("0")  # NTP answers: the clock steps 25 years forward, no restart
            wait_for(lambda: _clocks(data) == {"corrected"}, 30, "the times to be corrected")
            # ... and the cloud corrects what it stored before (the correction, acknowledged, leaves
            # the device's outbox)
            wait_for(
                lambda: {v[2] for v in _cloud_rows(cloud_db, before).values()} == {"corrected"},
                60,
                "the cloud to correct the delivered results",
            )
            wait_for(lambda: _outbox_kinds(data) == set(), 30, "the correction to be acknowledged")
            after = _post_jobs(dev.url, 3)
            wait_for(lambda: len(_cloud_rows(cloud_db, after)) == 3, 60, "the later results in the cloud")
            assert dev.proc is not None and dev.proc.poll() is None
            assert all(r["state"] == "running" for r in dev.roles()), dev.roles()
        with sqlite3.connect(data / DB_NAME) as conn:
            rows = conn.execute("SELECT id, created, clock, rowid FROM results ORDER BY rowid").fetchall()
        assert [r[0] for r in rows] == before + after  # the sequence keeps their order
        assert all(r[2] == "corrected" for r in rows[:4]) and all(r[2] is None for r in rows[4:]), rows
        created = [r[1] for r in rows]
        assert created == sorted(created)  # corrected times fall before the later ones
        assert all(t0 - 120 <= c <= t_jump + 0.05 for c in created[:4]), (t0, created, t_jump)
        fixed = _cloud_rows(cloud_db, before)
        for (rid, device_time, _, _), flag in zip(rows[:4], flagged.values(), strict=True):
            cloud_time, received, time_flag, device_created, seq, corrected = fixed[rid]
            assert cloud_time == device_time  # the same sum on both ends, to the bit
            assert (time_flag, device_created, seq) == ("corrected", flag[3], flag[4])  # kept visible
            assert corrected is not None and corrected >= t_jump - 1 and received == flag[1]
        shown = fleet.cloud_http.get(f"{fleet.api}/results/{before[0]}").json()  # what an operator reads
        assert (shown["time_flag"], shown["device_created"]) == ("corrected", flagged[before[0]][3])
        assert shown["created"] == rows[0][1] and shown["time_corrected"] == fixed[before[0]][5]
        later = _cloud_rows(cloud_db, after)
        assert all(v[2] is None and v[3] is None for v in later.values()), later  # trusted: unflagged
        assert min(v[4] for v in later.values()) > max(v[4] for v in flagged.values())  # seq


def test_a_correction_the_cloud_has_not_acknowledged_survives_a_power_cut(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Results delivered in 2001; the cloud ingest is down when the clock steps; the device corrects
    its times and queues the correction, then the whole `edge-agent up` is SIGKILLed before anything
    acknowledged it. After the restart (the ingest back) the cloud corrects the delivered results."""
    with clock_fleet(tmp_path, request, "sqlite") as cf:
        with running(cf.dev):
            before = _post_jobs(cf.dev.url, 3)
            wait_for(lambda: len(_cloud_rows(cf.cloud_db, before)) == 3, 60, "the 2001 results in the cloud")
            (ingest,) = [proc for name, proc in cf.fleet.procs if name == "cloud-ingest"]
            ingest.terminate()
            assert ingest.wait(15) == 0
            cf.offset_file.write_text("0")  # NTP answers while the cloud cannot acknowledge anything
            wait_for(lambda: _outbox_kinds(cf.dev.data) == {"clock"}, 30, "the correction queued")
            cf.dev.kill()  # a power cut: supervisor and every role at once
        assert _clocks(cf.dev.data) == {"corrected"}
        assert {v[2] for v in _cloud_rows(cf.cloud_db, before).values()} == {"unsynced"}
        cf.fleet.spawn("cloud-ingest", [str(BIN / "cloud-sync"), "ingest"], cf.fleet.cloud_env)
        with running(cf.dev):
            wait_for(
                lambda: {v[2] for v in _cloud_rows(cf.cloud_db, before).values()} == {"corrected"},
                60,
                "the cloud to correct the delivered results after the restart",
            )
            wait_for(lambda: _outbox_kinds(cf.dev.data) == set(), 30, "the correction to be acknowledged")
        with sqlite3.connect(cf.dev.data / DB_NAME) as conn:
            device = dict(conn.execute("SELECT id, created FROM results").fetchall())
        assert {rid: v[0] for rid, v in _cloud_rows(cf.cloud_db, before).items()} == device


def test_a_full_outbox_drops_results_never_the_correction(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The outbox holds 3 entries (``drop_oldest``) and the cloud ingest is down: results recorded in
    2001 after the first three were delivered are given up by the on-full policy, more after the
    clock steps. The correction (its own table, never under that policy) still waits, reaches the
    cloud once the ingest is back and corrects the three delivered results; the dropped ones never
    arrive (nothing to correct), the device keeps them all, corrected."""
    with clock_fleet(tmp_path, request, "sqlite") as cf:
        cf.dev.env |= {"EDGE_SYNC__OUTBOX_MAX_ROWS": "3", "EDGE_SYNC__ON_FULL": "drop_oldest"}
        with running(cf.dev):
            delivered = _post_jobs(cf.dev.url, 3)
            wait_for(
                lambda: len(_cloud_rows(cf.cloud_db, delivered)) == 3, 60, "the 2001 results in the cloud"
            )
            (ingest,) = [proc for name, proc in cf.fleet.procs if name == "cloud-ingest"]
            ingest.terminate()
            assert ingest.wait(15) == 0
            dropped = _post_jobs(cf.dev.url, 5)  # the outbox keeps the newest 3 of them
            cf.offset_file.write_text("0")  # NTP answers
            wait_for(lambda: _clocks(cf.dev.data) == {"corrected"}, 30, "the times corrected on the device")
            wait_for(lambda: "clock" in _outbox_kinds(cf.dev.data), 30, "the correction queued")
            _post_jobs(cf.dev.url, 3)  # synced results push the 2001 ones out of the outbox
            with sqlite3.connect(cf.dev.data / DB_NAME) as conn:
                waiting = {r[0] for r in conn.execute("SELECT id FROM outbox")}
                (body,) = [json.loads(b) for (b,) in conn.execute("SELECT body FROM clock_corrections")]
                given_up = conn.execute(
                    "SELECT value FROM counters WHERE name = 'outbox_dropped'"
                ).fetchone()[0]
            assert len(waiting) == 3 and not waiting & {*delivered, *dropped} and given_up == 5
            assert body["count"] == 8  # the delivered and the dropped ones: every result of the spell
            cf.fleet.spawn("cloud-ingest", [str(BIN / "cloud-sync"), "ingest"], cf.fleet.cloud_env)
            wait_for(
                lambda: {v[2] for v in _cloud_rows(cf.cloud_db, delivered).values()} == {"corrected"},
                60,
                "the cloud to correct the delivered results",
            )
            wait_for(
                lambda: _outbox_kinds(cf.dev.data) == set(), 30, "the correction and results acknowledged"
            )
        with sqlite3.connect(cf.dev.data / DB_NAME) as conn:
            device = dict(conn.execute("SELECT id, created FROM results").fetchall())
        assert {rid: v[0] for rid, v in _cloud_rows(cf.cloud_db, delivered).items()} == {
            rid: device[rid] for rid in delivered
        }
        # given up on the device; one published before it was dropped may still reach the cloud
        # from the broker's queue: then it is corrected like the rest
        arrived = _cloud_rows(cf.cloud_db, dropped)
        assert all(v[2] == "corrected" and v[0] == device[rid] for rid, v in arrived.items()), arrived
