"""``cloud-sync db copy``: an SQLite store copied into a real PostgreSQL, row for row."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud_sync import cli
from cloud_sync.store import ResultQuery, Store
from cloud_sync.store.copy import TABLES
from edge_agent.sync import protocol
from tests.cloud import query, result_record, results_msg, status_msg
from tests.conftest import make_cloud_db
from tests.pgserver import PgServer


def fill(store: Store) -> None:
    t0 = 1_700_000_000.0
    for d in range(5):
        dev = f"dev-{d}"
        store.record_status(status_msg(dev), t0 + d)
        store.record_telemetry(protocol.Telemetry(device=dev, ts=t0 + d, metrics={"outbox_depth": d}), t0 + d)
        records = [result_record(label=f"l{i % 3}", created=t0 + i) for i in range(40)]
        store.record_results(results_msg(dev, records), t0 + 50, "ingest-x")
    store.add_command("c1", "dev-1", "ping", {}, t0)
    store.record_reply(protocol.CommandReply(device="dev-1", id="c1", ok=True, result={"p": 1}, ts=t0), t0)
    store.add_model_version("iris", "2", {"name": "iris", "version": "2"}, sha256="ab" * 32, created=t0)
    store.create_deployment("dep1", [{"model": "iris", "version": "2"}], ["dev-0", "dev-1"], t0 + 1)
    outcome = protocol.UpdateOutcome(deployment="dep1", model="iris", version="2", state="active", ts=t0 + 2)
    store.record_reported(
        protocol.ModelsReported(device="dev-0", models={"iris": "2"}, last_update=outcome, ts=t0 + 2), t0 + 2
    )
    # the tables of the later migrations: benchmark figures, sessions, counters, rollouts
    stage = protocol.StageFigures(p50_ms=0.5, p99_ms=1.0)
    row = protocol.BenchRow(
        batch=1, threads=1, calls=10, p50_ms=1.0, p99_ms=2.0, throughput_rps=900.0, stages={"infer": stage}
    )
    bench = protocol.ModelBench(
        model="iris", version="2", backend="onnx", inputs="tensors", memory_mb=3.5, ts=t0 + 3, rows=[row]
    )
    reported = protocol.ModelsReported(device="dev-1", models={"iris": "2"}, ts=t0 + 3, bench={"iris": bench})
    store.record_reported(reported, t0 + 3)
    store.revoke_session("nonce-1", time.time() + 3600)
    store.next_counter("targets:dev-0")
    store.save_rollout("r1", "running", {"id": "r1", "wave": 0}, t0 + 4)
    # a device's clock correction (no stored result of its boot: the results' counts stay)
    correction = protocol.ClockCorrection(
        device="dev-2",
        id="clock:3:b-1",
        boot="b-1",
        first_seq=3,
        last_seq=3,
        count=1,
        boot_time=t0,
        ts=t0 + 5,
    )
    assert store.record_clock_correction(correction, t0 + 6) == 0


def rows(db: Path | str, table: str, key: str) -> list[tuple[object, ...]]:
    return query(db, f"SELECT * FROM {table} ORDER BY {key}")


def test_an_sqlite_store_is_copied_into_postgresql_row_for_row(
    request: pytest.FixtureRequest,
    pg_server: PgServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "cloud.sqlite3"
    store = Store(source)
    fill(store)
    store.close()
    target = make_cloud_db(request, "postgresql", tmp_path)
    argv = ["db", "copy", "--from", f"sqlite://{source}", "--to", str(target), "--batch", "7"]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "results" in out and "200 rows" in out
    for table, key in TABLES:
        assert rows(target, table, key) == rows(source, table, key), table
    copied = Store(target)
    try:
        page = copied.results(ResultQuery(device="dev-3", label="l1", limit=5))
        assert [r["id"] for r in page.items] == [
            r["id"] for r in Store(source).results(ResultQuery(device="dev-3", label="l1", limit=5)).items
        ]
        assert copied.deployment_status("dep1")["summary"] == {"active": 1, "pending": 1}
        copied.record_status(status_msg("dev-new"), time.time())  # the id sequence moved past the copy
        assert copied.status_history("dev-new")[0]["state"] == "online"
    finally:
        copied.close()
    # the target has moved on (a device the source lacks): a second copy is refused, nothing written
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "copy into an empty database" in capsys.readouterr().err
    assert query(target, "SELECT count(*) FROM results") == [(200,)]


def test_a_copy_run_again_finishes_an_interrupted_one_and_stores_nothing_twice(
    request: pytest.FixtureRequest, pg_server: PgServer, tmp_path: Path
) -> None:
    source = tmp_path / "cloud.sqlite3"
    store = Store(source)
    fill(store)
    store.close()
    target = make_cloud_db(request, "postgresql", tmp_path)
    argv = ["db", "copy", "--from", str(source), "--to", str(target)]
    assert cli.main(argv) == cli.EXIT_OK
    # as if the first run had stopped part-way through the results table
    query(target, "DELETE FROM results WHERE id IN (SELECT id FROM results ORDER BY id LIMIT 60)")
    assert query(target, "SELECT count(*) FROM results") == [(140,)]
    assert cli.main(argv) == cli.EXIT_OK
    assert cli.main(argv) == cli.EXIT_OK
    for table, key in TABLES:
        assert rows(target, table, key) == rows(source, table, key), table


def test_copy_refusals_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "a.sqlite3"
    Store(db).close()
    assert cli.main(["db", "copy", "--from", str(db), "--to", str(db)]) == cli.EXIT_USAGE
    assert "same database" in capsys.readouterr().err
    code = cli.main(["db", "copy", "--from", str(db), "--to", "postgresql://cloud@127.0.0.1:9/none"])
    assert code == cli.EXIT_STORE
    assert "cannot connect to postgresql://cloud@127.0.0.1:9/none" in capsys.readouterr().err
