"""``edge-agent models bench``: the device's own perf_analyzer.

For each thread count and batch size it sends requests one at a time through the
engine, exactly as the serving path runs them (validation or image decoding,
inference, post-processing): p50/p99 of the whole request, of preprocess and of
postprocess, and rows per second, come from those requests. The infer stage is
then timed on its own, the engine's batch call back to back on the request's
prepared tensors, as perf_analyzer times a model's compute: between whole requests
the decoding and post-processing evict the model from the CPU caches, which would
charge the model for its neighbours' work. (Half the time goes to each.) Requests
carry the package's own sample images when the model takes images and has some
(``--tensors``: never), else its golden inputs repeated to the batch size.

Memory added by the model is the process's resident memory after loading it and
running one request at the largest batch, minus before (the runtime library, and
OpenCV for an image model, are loaded first: it counts the model, not libraries).

Figures are written to ``<data_dir>/bench/<model>.json`` (the latest run per model);
the sync role reads them (this module imports no runtime at import time) and reports
them on ``models/reported``. Their shape is ``edge_agent.sync.protocol.ModelBench``.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.sync.protocol import BenchRow, ModelBench, StageFigures

logger = logging.getLogger(__name__)

STAGES = ("preprocess", "infer", "postprocess")
BENCH_DIR = "bench"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_BATCH = 1024


def default_threads() -> tuple[int, ...]:
    """1, and every core up to 4 (a Raspberry Pi 4/5 has 4)."""
    cores = min(os.cpu_count() or 1, 4)
    return (1,) if cores == 1 else (1, cores)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    batches: tuple[int, ...] = (1, 8, 32)
    threads: tuple[int, ...] = ()  # () = default_threads()
    seconds: float = 1.0  # timed per point, at least min_calls requests
    min_calls: int = 10
    warmup: int = 3
    tensors: bool = False  # feed golden tensors even to an image model (no decoding per request)

    def __post_init__(self) -> None:
        if not self.batches or any(not 1 <= b <= MAX_BATCH for b in self.batches):
            raise InvalidInput(f"batch sizes must be 1..{MAX_BATCH}, got {list(self.batches)}")
        if any(not 1 <= t <= 64 for t in self.threads):
            raise InvalidInput(f"thread counts must be 1..64, got {list(self.threads)}")
        if not 0 < self.seconds <= 600 or self.min_calls < 1 or self.warmup < 0:
            raise InvalidInput("seconds must be in (0, 600], min_calls >= 1, warmup >= 0")


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, not current


# -- requests --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    tensors: dict[str, np.ndarray] | None
    images: list[bytes] | None

    @property
    def kind(self) -> str:
        return "images" if self.images is not None else "tensors"


def sample_images(package_dir: Path) -> list[bytes]:
    samples = package_dir / "samples"
    if not samples.is_dir():
        return []
    return [p.read_bytes() for p in sorted(samples.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def make_request(engine: Any, name: str, version: str, batch: int, tensors: bool = False) -> Request:
    from edge_agent.runtime.package import load_golden

    store = engine.store
    m = store.manifest(name, version)
    pkg = store.package_dir(name, version)
    images = sample_images(pkg) if m.preprocessing is not None and not tensors else []
    if images:
        return Request(None, [images[i % len(images)] for i in range(batch)])
    inputs, _ = load_golden(pkg, m)
    out = {}
    for k, v in inputs.items():
        idx = np.arange(batch) % v.shape[0]
        out[k] = np.ascontiguousarray(v[idx])
    return Request(out, None)


# -- running ---------------------------------------------------------------------------------
def _point(
    engine: Any, name: str, version: str, req: Request, settings: BenchSettings
) -> dict[str, list[float]]:
    """Half the time whole requests (preprocess, postprocess, total), half the model alone (infer)."""
    from edge_agent.runtime.inputs import validate

    def request() -> dict[str, float]:
        pred = engine.predict(name, req.tensors, images=req.images, version=version)
        return pred.timings_ms  # type: ignore[no-any-return]

    model = engine.model(name, version)
    if req.images is not None:
        tensors, _ = engine.prepare_images(model.manifest, req.images)
    else:
        tensors = validate(model.manifest, req.tensors or {}, MAX_BATCH)

    def infer() -> dict[str, float]:
        t0 = time.perf_counter_ns()
        engine.infer(model, tensors)
        return {"infer": (time.perf_counter_ns() - t0) / 1e6}

    samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    for call, keep in ((request, ("preprocess", "postprocess", "total")), (infer, ("infer",))):
        for _ in range(settings.warmup):
            call()
        deadline = time.perf_counter() + settings.seconds / 2
        while len(samples[keep[0]]) < settings.min_calls or time.perf_counter() < deadline:
            timings = call()
            for stage in keep:
                samples[stage].append(timings[stage])
    return samples


def _row(batch: int, threads: int, samples: dict[str, list[float]]) -> BenchRow:
    def p(values: list[float]) -> tuple[float, float]:
        p50, p99 = np.percentile(np.asarray(values), [50, 99])
        return round(float(p50), 4), round(float(p99), 4)

    total = samples["total"]
    p50, p99 = p(total)
    return BenchRow(
        batch=batch,
        threads=threads,
        calls=len(total),
        p50_ms=p50,
        p99_ms=p99,
        throughput_rps=round(batch * len(total) / (sum(total) / 1e3), 2),
        stages={s: StageFigures(p50_ms=p(samples[s])[0], p99_ms=p(samples[s])[1]) for s in STAGES},
    )


def run_bench(
    store: Any,
    name: str,
    version: str | None = None,
    settings: BenchSettings | None = None,
    *,
    max_image_pixels: int | None = None,
) -> ModelBench:
    """Benchmark one model version (default: the active one) on this machine."""
    from edge_agent.runtime.backends import BackendOptions, get_backend
    from edge_agent.runtime.engine import Engine, EngineOptions

    settings = settings or BenchSettings()
    version = version or store.active_version(name)
    m = store.verify(name, version)
    get_backend(m.backend)  # import the runtime library before the memory baseline
    largest = max(settings.batches)
    rows: list[BenchRow] = []
    memory_mb: float | None = None
    kind = "tensors"
    for threads in settings.threads or default_threads():
        extra = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
        engine = Engine(store, EngineOptions(backend=BackendOptions(threads, 1), max_rows=MAX_BATCH, **extra))
        try:
            probe = make_request(engine, name, version, largest, settings.tensors)
            if probe.images is not None:  # OpenCV and the decoded images are not the model's
                engine.prepare_images(m, probe.images)
            before = rss_bytes()
            engine.model(name, version)
            engine.predict(name, probe.tensors, images=probe.images, version=version)
            if memory_mb is None:
                memory_mb = round(max(rss_bytes() - before, 0) / 2**20, 2)
            for batch in settings.batches:
                req = make_request(engine, name, version, batch, settings.tensors)
                kind = req.kind
                rows.append(_row(batch, threads, _point(engine, name, version, req, settings)))
                logger.debug("bench %s/%s batch %d threads %d done", name, version, batch, threads)
        finally:
            engine.close()
    return ModelBench(
        model=name,
        version=version,
        backend=m.backend,
        inputs="images" if kind == "images" else "tensors",
        memory_mb=memory_mb,
        ts=time.time(),
        rows=rows,
    )


# -- the latest figures, on disk ---------------------------------------------------------------
def bench_dir(data_dir: Path) -> Path:
    return Path(data_dir) / BENCH_DIR


def save(data_dir: Path, figures: ModelBench) -> Path:
    from edge_agent.runtime.store import atomic_write

    d = bench_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{figures.model}.json"
    atomic_write(path, figures.model_dump_json(indent=2).encode())
    return path


def latest(data_dir: Path) -> dict[str, ModelBench]:
    """Every model's latest saved figures; unreadable files are logged and skipped."""
    d = bench_dir(data_dir)
    out: dict[str, ModelBench] = {}
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            fig = ModelBench.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            logger.warning("ignoring benchmark file %s: %s", path, exc)
            continue
        out[fig.model] = fig
    return out


def stamp(data_dir: Path) -> tuple[tuple[str, int], ...]:
    """Cheap change detector for the sync role: (file, mtime) of every saved figure."""
    d = bench_dir(data_dir)
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in d.glob("*.json")))
    except OSError:
        return ()


def table(fig: ModelBench) -> str:
    head = (
        f"{'batch':>5} {'threads':>7} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10}   "
        f"{'pre p50':>8} {'infer p50':>9} {'infer p99':>9} {'post p50':>8}"
    )
    mem = "?" if fig.memory_mb is None else f"{fig.memory_mb:.1f} MB"
    lines = [
        f"{fig.model}/{fig.version} ({fig.backend}, {fig.inputs}); memory added by the model: {mem}",
        head,
        "-" * len(head),
    ]
    for r in fig.rows:
        s = r.stages
        lines.append(
            f"{r.batch:>5} {r.threads:>7} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} {r.throughput_rps:>10.1f}   "
            f"{s['preprocess'].p50_ms:>8.3f} {s['infer'].p50_ms:>9.3f} {s['infer'].p99_ms:>9.3f} "
            f"{s['postprocess'].p50_ms:>8.3f}"
        )
    return "\n".join(lines)
