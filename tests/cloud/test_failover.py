"""Two ingest processes on one PostgreSQL through an MQTT 5 shared subscription; one SIGKILLed
while 5,000 results flow: every result id stored exactly once, none lost (the devices' outboxes
re-send what was not acknowledged). The 50,000-result run is bench/ingest_failover.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud.failover import run_failover
from tests.conftest import PgUrl, make_cloud_db
from tests.pgserver import PgServer
from tests.sync.broker import Broker, run_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with run_broker(tmp_path / "broker") as b:
        yield b


def test_an_ingest_killed_mid_stream_loses_nothing_and_stores_nothing_twice(
    request: pytest.FixtureRequest, pg_server: PgServer, broker: Broker, tmp_path: Path
) -> None:
    db = make_cloud_db(request, "postgresql", tmp_path)
    assert isinstance(db, PgUrl)
    run = run_failover(broker, db, tmp_path, results=5000, devices=20, batch=25, stream_s=6.0)
    assert run.missing == set(), f"{len(run.missing)} results lost"
    assert (run.stored, run.distinct) == (5000, 5000)  # exactly once, counted by id
    assert run.acked == 5000
    assert set(run.by_ingest) == {"ingest-a", "ingest-b"}, run.by_ingest
    assert run.killed_after > 0  # the kill landed mid-stream: a had stored some, b stored the rest
    assert run.by_ingest["ingest-b"] > run.by_ingest["ingest-a"]
    assert run.resent_batches > 0  # what the killed ingest held came back through the devices' outboxes
