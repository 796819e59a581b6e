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

from edge_agent.storage import DB_NAME
from tests.conftest import MODELS, copy_models
from tests.device import Device, fill, running, small_filesystem, wait_for
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
    return dict(json.loads((data / "camera-status.json").read_text()))


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
