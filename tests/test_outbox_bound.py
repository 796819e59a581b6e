"""The outbox bound holds where rows are written: `edge-agent up` with a gateway and a worker and
no sync role at all, real jobs, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from edge_agent.storage import DB_NAME, OUTBOX_DROPPED
from tests.conftest import copy_models
from tests.device import Device, running, wait_for


def test_jobs_recorded_without_a_sync_role_keep_the_outbox_bound(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models", ["iris"])
    data = tmp_path / "data"
    env = {
        "EDGE_UP__ROLES": json.dumps(["serve", "worker"]),
        "EDGE_SYNC__OUTBOX_MAX_ROWS": "5",
        "EDGE_SYNC__ON_FULL": "drop_oldest",
    }
    with running(Device(models, data, env, tmp_path / "up.log")) as dev:
        jobs = [
            httpx.post(f"{dev.url}/async/iris", json={"data": [[5.0 + i / 10, 3.4, 1.5, 0.2]]}).json()[
                "job_id"
            ]
            for i in range(12)
        ]
        wait_for(
            lambda: all(httpx.get(f"{dev.url}/jobs/{j}").json()["status"] == "done" for j in jobs),
            60,
            "the jobs",
        )
    with sqlite3.connect(data / DB_NAME) as conn:
        left = [r[0] for r in conn.execute("SELECT id FROM outbox ORDER BY seq")]
        dropped = conn.execute("SELECT value FROM counters WHERE name = ?", (OUTBOX_DROPPED,)).fetchone()[0]
        results = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert left == jobs[-5:]  # the newest five, in order
    assert dropped == 7 and results == 12
