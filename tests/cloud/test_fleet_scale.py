"""The fleet at size, on both backends: device pages, the summary computed by the database, the
query plans of the list endpoints (indexes, not scans), and the API over them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cloud_sync.api import create_app
from cloud_sync.config import CloudConfig
from cloud_sync.store import ResultQuery, Store
from cloud_sync.store.writes import INSERT_RESULT
from edge_agent.sync import protocol
from tests.conftest import CloudDb, PgUrl

DEVICES = 300
RESULTS_PER_DEVICE = 40
T0 = 1_700_000_000.0


def device_name(i: int) -> str:
    return f"{'cam' if i % 3 else 'pi'}-{i:05d}"


@pytest.fixture(scope="module")
def fleet(
    request: pytest.FixtureRequest, db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> CloudDb:
    """300 devices (online, offline, never reported), their telemetry, 12,000 results; analysed."""
    from tests.conftest import make_cloud_db

    db = make_cloud_db(request, db_backend, tmp_path_factory.mktemp(f"fleet-{db_backend}"))
    store = Store(db)
    try:
        with store.transaction() as tx:
            for i in range(DEVICES):
                name = device_name(i)
                if i % 10 != 9:  # every tenth device never sent a status
                    status = protocol.Status(
                        device=name,
                        state="online" if i % 4 else "offline",
                        agent_version=f"0.{i % 3}.0",
                        models={"iris": str(1 + i % 2)},
                        ts=T0 + i,
                    )
                    store.record_status(status, T0 + i)
                metrics = {"outbox_depth": i % 7, "rss_bytes": 1000 + i}
                store.record_telemetry(protocol.Telemetry(device=name, ts=T0 + i, metrics=metrics), T0 + i)
                store.record_telemetry(
                    protocol.Telemetry(device=name, ts=T0 + i - 60, metrics={"outbox_depth": 99}), T0
                )  # older: not the one that counts
                rows = [
                    (
                        f"r-{i}-{j}",
                        name,
                        "b",
                        "s",
                        None,
                        "iris" if j % 2 else "digits",
                        "1",
                        f"l{j % 5}",
                        T0 + j,
                    )
                    for j in range(RESULTS_PER_DEVICE)
                ]
                tx.executemany(
                    INSERT_RESULT,
                    [(*r, T0, "i", json.dumps({"label": r[7]}), None, None, j) for j, r in enumerate(rows)],
                )
        store.analyze()
    finally:
        store.close()
    return db


@pytest.fixture
def store(fleet: CloudDb) -> Iterator[Store]:
    s = Store(fleet)
    yield s
    s.close()


def test_device_pages_cover_the_fleet_once_in_id_order(store: Store) -> None:
    seen, cursor = [], None
    while True:
        page = store.device_page(after=cursor, limit=70)
        seen.extend(d["id"] for d in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(device_name(i) for i in range(DEVICES))
    online = store.device_page(online=True, limit=1000).items
    assert {d["id"] for d in online} == {device_name(i) for i in range(DEVICES) if i % 10 != 9 and i % 4}
    pis = store.device_page(prefix="pi-", limit=1000).items
    assert len(pis) == len([i for i in range(DEVICES) if i % 3 == 0])


def test_the_fleet_summary_matches_the_rows(store: Store) -> None:
    summary = store.fleet_summary()
    statused = [i for i in range(DEVICES) if i % 10 != 9]
    online = [i for i in statused if i % 4]
    assert summary["devices"] == DEVICES
    assert (summary["online"], summary["offline"]) == (len(online), len(statused) - len(online))
    assert summary["unknown"] == DEVICES - len(statused)
    depths = [i % 7 for i in range(DEVICES)]  # the newest telemetry only
    assert summary["outbox"] == {"devices_reporting": DEVICES, "total": sum(depths), "max": 6}
    agents: dict[str, int] = {}
    for i in online:  # an offline status (the Last Will) carries no versions
        agents[f"0.{i % 3}.0"] = agents.get(f"0.{i % 3}.0", 0) + 1
    assert summary["agent_versions"] == agents
    by_version = {(m["model"], m["version"]): m["devices"] for m in summary["model_versions"]}
    assert by_version == {
        ("iris", "1"): len([i for i in online if i % 2 == 0]),
        ("iris", "2"): len([i for i in online if i % 2 == 1]),
    }


# (what is asked, the index its plan must use): SQLite and PostgreSQL name them alike, except the
# primary key's, which each database names itself.
PLANS = [
    (ResultQuery(device=device_name(7), limit=50), "idx_results_device_created"),
    (ResultQuery(limit=50), "idx_results_created_id"),
    (ResultQuery(limit=50, cursor=None, since=T0 + 30, until=T0 + 31), "idx_results_created_id"),
    (ResultQuery(model="iris", label="l3", limit=50, since=T0 + 38), "idx_results_"),
]


def full_scan(plan: str, table: str) -> bool:
    """A plan that reads the whole table: SQLite's bare ``SCAN t`` (an index-ordered ``SCAN t USING
    INDEX`` stops at the LIMIT), or PostgreSQL's ``Seq Scan on t``."""
    lines = [line.strip() for line in plan.splitlines()]
    sqlite_scan = any(line.startswith(f"SCAN {table}") and "INDEX" not in line for line in lines)
    return sqlite_scan or f"Seq Scan on {table}" in plan


@pytest.mark.parametrize(("q", "index"), PLANS)
def test_results_queries_use_an_index(store: Store, q: ResultQuery, index: str) -> None:
    plan = store.explain(*store.results_sql(q))
    assert index in plan, plan
    assert not full_scan(plan, "results"), plan


def test_device_pages_and_the_newest_telemetry_use_indexes(store: Store) -> None:
    pk = "sqlite_autoindex_devices_1" if store.dialect == "sqlite" else "devices_pkey"
    # 300 rows: PostgreSQL rightly prefers reading them all; asked without that, the index serves
    plan = store.explain(*store.device_page_sql(after=device_name(100), limit=100), seqscan=False)
    assert pk in plan and not full_scan(plan, "devices"), plan
    plan = store.explain(*store.device_page_sql(online=True, after=device_name(5), limit=100), seqscan=False)
    assert "idx_devices_online_id" in plan, plan
    one = "SELECT metrics FROM telemetry WHERE device = ? ORDER BY ts DESC LIMIT 1"
    plan = store.explain(one, [device_name(3)], seqscan=False)
    assert not full_scan(plan, "telemetry") and ("telemetry" in plan), plan


def test_the_api_pages_devices_and_serves_the_summary(
    fleet: CloudDb, tmp_path_factory: pytest.TempPathFactory
) -> None:
    state = tmp_path_factory.mktemp("api-state")
    config = CloudConfig.model_validate(
        {"db_path": state / "cloud.sqlite3"}
        | ({"db_url": str(fleet)} if isinstance(fleet, PgUrl) else {"db_path": fleet})
    )
    store = Store(config.db_target)
    client = TestClient(create_app(config, store=store))  # no lifespan: no broker needed to read
    try:
        first = client.get("/devices", params={"limit": 100})
        assert first.status_code == 200
        body = first.json()
        assert len(body["devices"]) == 100 and body["next_cursor"] == body["devices"][-1]["id"]
        second = client.get("/devices", params={"limit": 100, "cursor": body["next_cursor"]}).json()
        assert second["devices"][0]["id"] > body["devices"][-1]["id"]
        assert len(client.get("/devices").json()["devices"]) == DEVICES  # unpaged: as before
        assert client.get("/devices", params={"limit": 0}).status_code == 422
        summary = client.get("/fleet/summary").json()
        assert summary == store.fleet_summary()
        started = time.perf_counter()
        page = client.get("/results", params={"device": device_name(5), "limit": 20}).json()
        assert len(page["results"]) == 20 and time.perf_counter() - started < 5  # generous: shared CPU
    finally:
        store.close()
