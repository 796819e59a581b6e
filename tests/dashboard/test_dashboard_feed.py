"""The fleet feed at size, on both backends: the first event carries the whole fleet, later ones
only the devices that changed, and the poller reads only devices seen since its last read."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from cloud_sync.dashboard.events import Feed, FleetCache
from cloud_sync.mqtt import LinkOptions, MqttLink
from cloud_sync.store import Store
from edge_agent.sync import protocol
from tests.cloud import status_msg
from tests.conftest import CloudDb

FLEET = 200


@pytest.fixture
def store(cloud_db: CloudDb) -> Iterator[Store]:
    s = Store(cloud_db)
    now = time.time()
    for i in range(FLEET):
        s.record_status(status_msg(f"dev-{i:04d}"), now - 600)  # seen ten minutes ago
    yield s
    s.close()


def telemetry(store: Store, device: str, depth: int) -> None:
    now = time.time()
    store.record_telemetry(protocol.Telemetry(device=device, ts=now, metrics={"outbox_depth": depth}), now)


def test_the_cache_reports_only_changed_devices(store: Store) -> None:
    cache = FleetCache(store)
    first, marks = cache.refresh(broker_connected=False)
    assert len(first) == FLEET and marks["summary"]["online"] == FLEET
    again, _ = cache.refresh(broker_connected=False)
    assert again == []  # nothing sent since: nothing changed
    telemetry(store, "dev-0042", 7)
    changed, marks = cache.refresh(broker_connected=False)
    assert [(d["id"], d["outbox_depth"]) for d in changed] == [("dev-0042", 7)]
    assert marks["summary"]["outbox"]["total"] == 7


async def frames(feed: Feed) -> AsyncIterator[tuple[str, dict[str, object]]]:
    async for chunk in feed.stream():
        if chunk.startswith("event: "):
            head, data = chunk.split("\n", 1)
            yield head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def test_the_stream_sends_the_fleet_once_then_only_what_changed(store: Store) -> None:
    link = MqttLink(
        LinkOptions(broker_host="127.0.0.1", broker_port=1), "feed-test"
    )  # never started: not connected

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        feed = Feed(store, link, interval_s=0.05)
        seen: list[tuple[str, dict[str, object]]] = []
        stream = frames(feed)
        seen.append(await asyncio.wait_for(anext(stream), 10))
        await asyncio.to_thread(telemetry, store, "dev-0007", 3)
        while True:
            event = await asyncio.wait_for(anext(stream), 10)
            seen.append(event)
            if event[0] == "fleet-delta" and event[1]["devices"]:
                break
        await stream.aclose()
        await feed.close()
        return seen

    seen = asyncio.run(scenario())
    kind, full = seen[0]
    assert kind == "fleet" and len(full["devices"]) == FLEET  # type: ignore[arg-type]
    kind, delta = seen[-1]
    assert [d["id"] for d in delta["devices"]] == ["dev-0007"]  # type: ignore[union-attr]
    assert len(json.dumps(delta)) < len(json.dumps(full)) / 20
