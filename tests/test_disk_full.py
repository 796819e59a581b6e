"""A full disk is a state, not a crash: `edge-agent up` (gateway, worker, batch, camera) with its
data directory on a small tmpfs this test mounts, filled with a ballast file, then freed.

Real processes, real SQLite, a real filesystem running out of blocks. Root is needed for the
mount (the test fails, it does not skip, without it)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo.fleet import BIN, MOSQUITTO, Fleet
from edge_agent.storage import DB_NAME
from tests.conftest import MODELS, copy_models
from tests.device import Device, fill, free_bytes, running, small_filesystem, wait_for
from tests.patterns.videos import write_face_video

MIB = 1024 * 1024
DIGIT_PNG = (MODELS / "digits" / "1" / "samples" / "digit_4.png").read_bytes()


def _env(video: Path, floor_mb: float, reserve_mb: float, roles: list[str]) -> dict[str, str]:
    return {
        "EDGE_UP__ROLES": json.dumps(roles),
        "EDGE_UP__RESTART_BACKOFF_S": "0.2",
        "EDGE_STORAGE__FREE_FLOOR_MB": str(floor_mb),
        "EDGE_STORAGE__FREE_RESERVE_MB": str(reserve_mb),
        "EDGE_BATCH__INTERVAL_S": "0.5",
        "EDGE_CAMERA__SOURCE": str(video),
        "EDGE_CAMERA__LOOP": "true",
        "EDGE_CAMERA__FPS": "10",
        "EDGE_CAMERA__THUMBNAILS": "true",
        "EDGE_PRELOAD": "false",
    }


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "disk", 24) as where:
        yield where


def _camera(data: Path) -> dict:  # type: ignore[type-arg]
    try:
        return dict(json.loads((data / "camera-status.json").read_text()))
    except FileNotFoundError:  # the camera role has not written its first status yet
        return {}


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}(?:{{{re.escape(sel)}}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _level(url: str) -> str:
    return str(httpx.get(f"{url}/health/all").json()["disk"]["state"])


def _integrity(data: Path) -> str:
    with sqlite3.connect(data / DB_NAME) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _writes(url: str, i: int) -> dict[str, httpx.Response]:
    x = [[5.0 + i * 1e-3, 3.5, 1.4, 0.2]]
    return {
        "async": httpx.post(f"{url}/async/iris", json={"data": x}),
        "sync-async": httpx.post(
            f"{url}/sync-async", content=DIGIT_PNG, headers={"content-type": "image/png"}
        ),
        "batch": httpx.post(f"{url}/batch/items", json={"model": "iris", "items": [{"data": x[0]}] * 20}),
        "data": httpx.post(f"{url}/data", content=DIGIT_PNG + i.to_bytes(4, "big")),
    }


def test_levels_shed_then_refuse_then_recover(tmp_path: Path, disk: Path) -> None:
    video = write_face_video(tmp_path / "face.avi").path
    models = copy_models(tmp_path / "models", ["iris", "face", "digits", "digits_int8"])
    data, ballast = disk / "data", disk / "ballast"
    env = _env(video, floor_mb=8, reserve_mb=4, roles=["serve", "worker", "batch", "camera"])
    with running(Device(models, data, env, tmp_path / "up.log")) as dev:
        url = dev.url
        wait_for(lambda: _camera(data).get("frames_inferred", 0) > 0, 60, "the camera's first frame")
        assert _level(url) == "ok"
        assert {k: r.status_code for k, r in _writes(url, 0).items()} == {
            "async": 202,
            "sync-async": 200,
            "batch": 201,
            "data": 201,
        }

        # shedding: optional writes stop, results still recorded
        fill(disk, ballast, 6 * MIB)
        wait_for(lambda: _level(url) == "shedding", 5, "the shedding level")
        for i in range(5):
            assert httpx.post(f"{url}/predict", json={"data": [[6.0 + i, 3.0, 4.0, 1.0]]}).status_code == 200
        assert _metric(url, "edge_disk_writes_shed_total", kind="prediction_cache") >= 5
        wait_for(lambda: _camera(data)["disk"]["shed"].get("thumbnail", 0) > 0, 10, "thumbnails shed")
        job = httpx.post(f"{url}/async/iris", json={"data": [[5.9, 3.0, 5.1, 1.8]]})
        assert job.status_code == 202
        jid = job.json()["job_id"]
        wait_for(lambda: httpx.get(f"{url}/jobs/{jid}").json()["status"] == "done", 30, "the job")

        # refusing: new work answers 507 with a message a person can act on; the roles stay up
        fill(disk, ballast, 2 * MIB)
        wait_for(lambda: _level(url) == "refusing", 5, "the refusing level")
        for name, r in _writes(url, 1).items():
            assert r.status_code == 507, (name, r.status_code, r.text)
            assert r.json()["code"] == "disk_full" and "retry later" in r.json()["error"], r.text
        t_full = time.time()
        cam = wait_for(
            lambda: (c := _camera(data))["frames_unrecorded_disk_full"] > 3 and c["updated"] > t_full and c,
            20,
            "the camera to count unrecorded frames with a fresh status",
        )
        assert cam["state"] == "running"
        assert _metric(url, "edge_disk_level", level="refusing") == 1.0
        assert _metric(url, "edge_disk_writes_refused_total", kind="queueing a job") >= 1

        # space comes back: no restart, everything works again
        ballast.unlink()
        wait_for(lambda: _level(url) == "ok", 5, "the ok level")
        again = _writes(url, 2)
        assert {k: r.status_code for k, r in again.items()} == {
            "async": 202,
            "sync-async": 200,
            "batch": 201,
            "data": 201,
        }
        jid = again["async"].json()["job_id"]
        wait_for(
            lambda: httpx.get(f"{url}/jobs/{jid}").json()["status"] == "done", 30, "a job after recovery"
        )
        n = cam["frames_inferred"]
        wait_for(lambda: _camera(data)["frames_inferred"] > n, 20, "the camera recording again")
        assert [(r["role"], r["state"], r["restarts"]) for r in dev.roles()] == [
            ("serve", "running", 0),
            ("worker", "running", 0),
            ("batch", "running", 0),
            ("camera", "running", 0),
        ]
    assert _integrity(data) == "ok"
    assert "internal error" not in dev.logs() and "Traceback" not in dev.logs(), dev.logs()[-3000:]


def test_sqlite_full_is_507_never_500_and_work_resumes(tmp_path: Path, disk: Path) -> None:
    """No reserve: writes run until SQLite itself answers SQLITE_FULL."""
    video = write_face_video(tmp_path / "face.avi").path
    models = copy_models(tmp_path / "models", ["iris"])
    data, ballast = disk / "data", disk / "ballast"
    env = _env(video, floor_mb=0, reserve_mb=0, roles=["serve", "worker", "batch"])
    with running(Device(models, data, env, tmp_path / "up.log")) as dev:
        url = dev.url
        fill(disk, ballast, 1 * MIB)
        seen: Counter[int] = Counter()
        accepted_jobs, accepted_items = [], []
        big = [[5.1, 3.5, 1.4, 0.2]] * 200
        for _ in range(400):
            r = httpx.post(f"{url}/batch/items", json={"model": "iris", "items": [{"data": x} for x in big]})
            seen[r.status_code] += 1
            if r.status_code == 201:
                accepted_items += r.json()["ids"]
            j = httpx.post(f"{url}/async/iris", json={"data": big[:1]})
            seen[j.status_code] += 1
            if j.status_code == 202:
                accepted_jobs.append(j.json()["job_id"])
            if seen[507] >= 20:
                break
        assert set(seen) <= {201, 202, 507}, seen
        assert seen[507] >= 20, seen
        r = httpx.post(f"{url}/batch/items", json={"model": "iris", "items": [{"data": big[0]}]})
        assert r.status_code == 507 and r.json()["code"] == "disk_full", r.text
        assert "KiB free" in r.json()["error"]
        fill(disk, ballast, 0)  # not a block left: a model activation cannot write its pointer
        act = httpx.post(f"{url}/v1/models/iris/versions/1/activate")
        assert act.status_code in (200, 507), act.text  # 200 if nothing had to change; never 500
        gone = httpx.delete(f"{url}/cache/prediction")
        assert gone.status_code in (200, 507), gone.text

        ballast.unlink()  # space is back: the same processes carry on
        r = wait_for(
            lambda: (x := httpx.post(f"{url}/async/iris", json={"data": big[:1]})).status_code == 202 and x,
            10,
            "a 202 after recovery",
        )
        accepted_jobs.append(r.json()["job_id"])

        def finished() -> bool:
            counts = httpx.get(f"{url}/jobs").json()["counts"]
            return bool(counts["queued"] == counts["running"] == 0)

        wait_for(finished, 90, "every accepted job")
        for jid in accepted_jobs:
            assert httpx.get(f"{url}/jobs/{jid}").json()["status"] == "done", jid

        def items_settled() -> bool:
            counts = httpx.get(f"{url}/batch").json()["counts"]
            return bool(counts["pending"] == counts["running"] == 0)  # a claimed chunk is still running

        wait_for(items_settled, 90, "every accepted item")
        assert [(r["role"], r["restarts"]) for r in dev.roles()] == [
            ("serve", 0),
            ("worker", 0),
            ("batch", 0),
        ]
    assert _integrity(data) == "ok"
    with sqlite3.connect(data / DB_NAME) as conn:
        done = conn.execute("SELECT COUNT(*) FROM batch_items WHERE status = 'done'").fetchone()[0]
        results = conn.execute("SELECT COUNT(*) FROM results WHERE source = 'batch'").fetchone()[0]
    assert done == len(accepted_items) == results
    assert "internal error" not in dev.logs(), dev.logs()[-3000:]


def _outbox_depth(data: Path) -> int:
    with sqlite3.connect(data / DB_NAME) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'result'").fetchone()[0])


def _cloud_ids(fleet: Fleet, device: str) -> list[str]:
    with sqlite3.connect(fleet.cloud_env["CLOUD_DB_PATH"]) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM results WHERE device = ?", (device,))]


def _ingest(fleet: Fleet, run: bool) -> None:
    """Stop (SIGTERM, the process this test started) or start the cloud's ingest role."""
    if run:
        fleet.spawn("cloud-ingest", [str(BIN / "cloud-sync"), "ingest"], fleet.cloud_env)
        return
    for name, proc in fleet.procs:
        if name == "cloud-ingest" and proc.poll() is None:
            proc.terminate()
            proc.wait(15)


def _telemetry_at_zero(fleet: Fleet, device: str, since: float) -> bool:
    r = fleet.cloud_http.get(f"{fleet.api}/telemetry", params={"device": device, "since": since})
    snaps = r.json()["telemetry"] if r.status_code == 200 else []
    return any(t["metrics"].get("disk_free_bytes") == 0 for t in snaps)


def test_zero_bytes_free_every_role_alive_then_everything_resumes(tmp_path: Path, disk: Path) -> None:
    """The data filesystem 100 % full (0 bytes free, not the reserve level), with results waiting
    in the outbox (the cloud's ingest was down): HTTP writes answer 507 (never 500), reads answer,
    every role stays alive without a restart, the sync role keeps its link and its telemetry
    (disk_free_bytes 0) but cannot claim results to send (a write); once space returns the same
    processes resume and every result reaches the cloud exactly once."""
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make setup mosquitto`"
    video = write_face_video(tmp_path / "face.avi").path
    models = copy_models(tmp_path / "models", ["iris", "face", "digits", "digits_int8"])
    data, ballast = disk / "data", disk / "ballast"
    work = tmp_path / "fleet"
    (work / "logs").mkdir(parents=True)
    fleet = Fleet(work, devices=())
    device = "zero-1"
    env = _env(video, floor_mb=8, reserve_mb=4, roles=["serve", "worker", "batch", "camera", "sync"])
    env |= {
        "EDGE_DEVICE_ID": device,
        "EDGE_SYNC__BROKER_HOST": "127.0.0.1",
        "EDGE_SYNC__BROKER_PORT": str(fleet.broker_port),
        "EDGE_SYNC__ACK_TIMEOUT_S": "3",
        "EDGE_SYNC__POLL_INTERVAL_S": "0.2",
        "EDGE_SYNC__TELEMETRY_INTERVAL_S": "1",
    }
    try:
        fleet.start_broker()
        fleet.start_cloud()
        with running(Device(models, data, env, tmp_path / "up.log")) as dev:
            url = dev.url
            wait_for(lambda: _camera(data).get("frames_inferred", 0) > 0, 60, "the camera's first frame")
            _ingest(fleet, run=False)  # results now wait in the outbox, unacknowledged
            jobs = [
                httpx.post(f"{url}/async/iris", json={"data": [[5.0 + i / 10, 3, 4, 1]]}) for i in range(10)
            ]
            assert all(j.status_code == 202 for j in jobs)
            wait_for(lambda: httpx.get(f"{url}/jobs").json()["counts"]["done"] >= 10, 30, "the jobs")

            fill(disk, ballast, 0)
            assert free_bytes(disk) == 0
            waiting = _outbox_depth(data)
            assert waiting >= 10
            before = len(_cloud_ids(fleet, device))
            t_full = time.time()
            for i in range(3):  # every HTTP write: 507 with the free space, never a 500
                for name, r in _writes(url, 10 + i).items():
                    assert r.status_code == 507, (name, r.status_code, r.text)
                    assert r.json()["code"] == "disk_full" and "(0 KiB free" in r.json()["error"], r.text
                act = httpx.post(f"{url}/v1/models/iris/versions/1/activate")
                assert act.status_code in (200, 507), act.text
                assert httpx.delete(f"{url}/cache/prediction").status_code in (200, 507)
                r = httpx.post(f"{url}/predict", json={"data": [[6.0 + i, 3.0, 4.0, 1.0]]})
                assert r.status_code == 200, r.text  # answers are computed; the cache fill is shed
                assert httpx.get(f"{url}/jobs").status_code == 200
                assert httpx.get(f"{url}/health/all").json()["disk"]["free_bytes"] == 0
                time.sleep(1)
            wait_for(
                lambda: _camera(data)["updated"] > t_full + 2, 10, "the camera's fresh status at 0 bytes"
            )

            # the cloud's ingest comes back while the disk is full: what the sync role does at 0 bytes
            _ingest(fleet, run=True)
            wait_for(lambda: _telemetry_at_zero(fleet, device, t_full), 30, "telemetry saying 0 bytes free")
            wait_for(lambda: len(_cloud_ids(fleet, device)) >= before + waiting, 30, "delivery at 0 bytes")
            time.sleep(4)  # longer than the ack timeout: nothing is sent twice meanwhile
            at_zero = {
                "outbox before": waiting,
                "outbox at 0 bytes": _outbox_depth(data),
                "in cloud before": before,
                "in cloud at 0 bytes": len(_cloud_ids(fleet, device)),
                "free": free_bytes(disk),
            }
            assert at_zero["free"] == 0, at_zero
            # delivered at 0 bytes (sent without the last_sent mark), each once; the acknowledged
            # rows stay until their delete can be written
            assert at_zero["in cloud at 0 bytes"] == before + waiting, at_zero
            assert [(r["role"], r["state"], r["restarts"]) for r in dev.roles()] == [
                ("serve", "running", 0),
                ("worker", "running", 0),
                ("batch", "running", 0),
                ("camera", "running", 0),
                ("sync", "running", 0),
            ], dev.roles()
            # said once per spell; a write that fits in blocks the WAL already has can pass at 0 bytes
            # and end a spell early, so "at least once" and not every turn
            assert 1 <= dev.logs().count("outbox: the disk is full; results are still sent") <= 5

            ballast.unlink()  # space returns: the same processes carry on
            again = wait_for(
                lambda: (x := _writes(url, 20)) and all(r.status_code < 300 for r in x.values()) and x,
                10,
                "writes accepted after recovery",
            )
            jid = again["async"].json()["job_id"]
            wait_for(lambda: httpx.get(f"{url}/jobs/{jid}").json()["status"] == "done", 30, "a job after")
            n = _camera(data)["frames_inferred"]
            wait_for(lambda: _camera(data)["frames_inferred"] > n, 20, "the camera recording again")
            httpx.post(f"{url}/batch/run")
            wait_for(lambda: httpx.get(f"{url}/batch").json()["counts"]["pending"] == 0, 30, "the items")
            wait_for(lambda: _outbox_depth(data) == 0, 60, "the outbox to drain")
            with sqlite3.connect(data / DB_NAME) as conn:
                device_ids = [r[0] for r in conn.execute("SELECT id FROM results")]
            wait_for(
                lambda: len(_cloud_ids(fleet, device)) >= len(device_ids), 30, "every result in the cloud"
            )
            assert sorted(_cloud_ids(fleet, device)) == sorted(device_ids)  # each once, none missing
            assert all(r["restarts"] == 0 for r in dev.roles()), dev.roles()
            assert "outbox: writes pass again" in dev.logs()
        print("at 0 bytes:", at_zero)
        assert _integrity(data) == "ok"
        assert "internal error" not in dev.logs() and "Traceback" not in dev.logs(), dev.logs()[-3000:]
    finally:
        fleet.stop_all()
