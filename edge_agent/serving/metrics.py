"""Prometheus metrics of the gateway, on a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.diskspace import LEVELS, DiskSpace

STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("queue", "preprocess", "infer", "postprocess")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        PlatformCollector(registry=r)
        self.requests = Counter(
            "edge_requests",
            "Requests handled, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.failures = Counter(
            "edge_request_failures",
            "Requests that failed, by model, endpoint and error code.",
            ["model", "endpoint", "code"],
            registry=r,
        )
        self.stage = Histogram(
            "edge_stage_seconds",
            "Time per request in each stage.",
            ["model", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edge_batch_size",
            "Rows per runtime call (dynamic batching).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._stage_children: dict[str, list[tuple[str, Any]]] = {}
        self.models_loaded = Gauge("edge_models_loaded", "Model versions loaded in this process.", registry=r)
        self.cache = Counter(
            "edge_cache_events", "Cache hits, misses and evictions.", ["cache", "event"], registry=r
        )

    def observe_stages(self, model: str, timings_ms: dict[str, float]) -> None:
        children = self._stage_children.get(model)
        if children is None:  # labels() costs a lock and a dict lookup: do it once per model
            children = self._stage_children[model] = [(s, self.stage.labels(model, s)) for s in STAGES]
        for stage, child in children:
            if stage in timings_ms:
                child.observe(timings_ms[stage] / 1000.0)

    def watch_disk(self, disk: DiskSpace) -> None:
        """Free space, the shedding level and the writes shed or refused, read at each scrape."""
        self.registry.register(_DiskCollector(disk))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DiskCollector(Collector):
    def __init__(self, disk: DiskSpace) -> None:
        self.disk = disk

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self.disk.state()
        yield GaugeMetricFamily(
            "edge_disk_free_bytes", "Free bytes on the data directory's filesystem.", value=st.free_bytes
        )
        level = GaugeMetricFamily(
            "edge_disk_level",
            "1 for the current free-space level: ok, shedding (optional writes stop), refusing (507).",
            labels=["level"],
        )
        for name in LEVELS:
            level.add_metric([name], 1.0 if st.level == name else 0.0)
        yield level
        shed = CounterMetricFamily(
            "edge_disk_writes_shed", "Optional writes skipped for lack of space, by kind.", labels=["kind"]
        )
        for kind, n in sorted(self.disk.shed.items()):
            shed.add_metric([kind], n)
        yield shed
        refused = CounterMetricFamily(
            "edge_disk_writes_refused", "Writes refused for lack of space (507), by kind.", labels=["kind"]
        )
        for kind, n in sorted(self.disk.refused.items()):
            refused.add_metric([kind], n)
        yield refused
