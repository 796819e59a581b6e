"""Prometheus metrics of the gateway, on a registry of its own.

The series every request records (``edge_requests``, ``edge_stage_seconds``, ``edge_batch_size``)
are plain Python numbers of our own (:class:`LoopCounter`, :class:`LoopHistogram`), exposed through
collectors in exactly the text prometheus_client's ``Counter`` and ``Histogram`` would give (those
take a lock for the sum and another for the bucket at each observation: a few us a request). They
are recorded without a lock, so only by the event loop thread: the ASGI middleware and fast path,
the inference service's coroutines and the batcher's ``on_batch`` (called from its coroutines) all
run there, and ``/metrics`` is read there too. Series that other threads record (cache events: the
data cache counts its misses in an executor thread) stay on prometheus_client. With ``--workers N``
each process has its own registry, as before.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

import prometheus_client.metrics
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

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
        self.requests = LoopCounter(
            "edge_requests",
            "Requests handled, by model, endpoint and HTTP status.",
            ("model", "endpoint", "status"),
            registry=r,
        )
        self.failures = Counter(
            "edge_request_failures",
            "Requests that failed, by model, endpoint and error code.",
            ["model", "endpoint", "code"],
            registry=r,
        )
        self.stage = LoopHistogram(
            "edge_stage_seconds",
            "Time per request in each stage.",
            ("model", "stage"),
            STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = LoopHistogram(
            "edge_batch_size",
            "Rows per runtime call (dynamic batching).",
            ("model",),
            BATCH_BUCKETS,
            registry=r,
        )
        self._stage_rows: dict[str, tuple[tuple[str, HistogramChild], ...]] = {}
        self.models_loaded = Gauge("edge_models_loaded", "Model versions loaded in this process.", registry=r)
        self.cache = Counter(
            "edge_cache_events", "Cache hits, misses and evictions.", ["cache", "event"], registry=r
        )

    def observe_stages(self, model: str, timings_ms: dict[str, float]) -> None:
        """``edge_stage_seconds`` of one request: the STAGES present in ``timings_ms`` (ms)."""
        row = self._stage_rows.get(model)
        if row is None:
            row = self._stage_rows[model] = tuple((s, self.stage.labels(model, s)) for s in STAGES)
        bounds = self.stage.bounds
        for stage, child in row:  # HistogramChild.observe, inlined: this runs 4 times a request
            if stage in timings_ms:
                seconds = timings_ms[stage] / 1000.0
                child.counts[bisect_left(bounds, seconds)] += 1
                child.sum += seconds

    def watch_disk(self, disk: DiskSpace) -> None:
        """Free space, the shedding level and the writes shed or refused, read at each scrape."""
        self.registry.register(_DiskCollector(disk))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _use_created() -> bool:
    """Whether ``_created`` series are exposed, as prometheus_client decides for its own metrics
    (``PROMETHEUS_DISABLE_CREATED_SERIES``, ``disable_created_metrics()``)."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class CounterChild:
    """One labelled series of a :class:`LoopCounter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    """One labelled series of a :class:`LoopHistogram`: a count per bucket (not cumulative; an
    observation equal to a bound counts in that bound's bucket, as ``le`` says) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", CounterChild, HistogramChild)
Family = TypeVar("Family", CounterMetricFamily, HistogramMetricFamily)


class _Loop(Collector, Generic[Child, Family]):
    """A labelled family recorded by the event loop thread only: its series by label values."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {values}")
            child = self._children[values] = self._new()
        return child

    def _new(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Family:
        raise NotImplementedError

    def _add(self, family: Family, values: tuple[str, ...], child: Child, created: bool) -> None:
        raise NotImplementedError

    def describe(self) -> list[Family]:
        return [self._family()]

    def collect(self) -> Iterator[Family]:
        family = self._family()
        created = _use_created()
        for values, child in list(self._children.items()):  # a copy: labels() may add one meanwhile
            self._add(family, values, child, created)
        yield family


class LoopCounter(_Loop[CounterChild, CounterMetricFamily]):
    """A labelled counter exposed as prometheus_client's ``Counter`` is (``_total``, ``_created``)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, registry: CollectorRegistry
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(
        self, family: CounterMetricFamily, values: tuple[str, ...], child: CounterChild, created: bool
    ) -> None:
        family.add_metric(values, child.value, created=child.created if created else None)


class LoopHistogram(_Loop[HistogramChild, HistogramMetricFamily]):
    """A labelled histogram exposed as prometheus_client's ``Histogram`` is (``_bucket`` with
    ``le`` up to ``+Inf``, ``_count``, ``_sum``, ``_created``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        *,
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in increasing order")
        self.bounds = (*bounds, INF) if not bounds or bounds[-1] != INF else tuple(bounds)
        if len(self.bounds) < 2:
            raise ValueError(f"{name}: at least one bucket below +Inf")
        self._le: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(
        self, family: HistogramMetricFamily, values: tuple[str, ...], child: HistogramChild, created: bool
    ) -> None:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for le, n in zip(self._le, list(child.counts), strict=True):
            total += n
            cumulative.append((le, total))
        family.add_metric(values, cumulative, child.sum)
        if created:  # HistogramMetricFamily has no created=: the sample prometheus_client's Histogram adds
            labels = dict(zip(self.labelnames, values, strict=True))
            family.add_sample(f"{self.name}_created", labels, child.created)


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
