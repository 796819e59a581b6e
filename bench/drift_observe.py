"""Per-call cost of drift observation on the caller's path (in-process, perf_counter_ns), for
docs/model-updates.md ("Off the caller's path"): the gateway's ``DriftMonitor.observe`` (a hand-off
to the statistics thread) against the baseline of computing the statistics inline on the caller's
path (``observe`` followed by the thread's own ``_drain``), in the same run. Run:

    .venv/bin/python bench/drift_observe.py

Requests are spaced by 0.2 ms so the monitor's thread runs between them, as between real requests.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.store import ModelStore  # noqa: E402
from edge_agent.serving.drift_monitor import DriftMonitor  # noqa: E402


def _noop(*args: object) -> None:
    return None


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    for name in ("iris", "digits"):
        shutil.copytree(ROOT / "models" / name / "1", tmp / "models" / name / "1")
    mon = DriftMonitor(ModelStore(tmp / "models", tmp / "state.json"), tmp / "drift")
    rng = np.random.default_rng(0)
    cases = {
        "iris 1 row": ("iris", rng.random((1, 4), dtype=np.float32), [{"label": "setosa"}]),
        "iris 10 rows": ("iris", rng.random((10, 4), dtype=np.float32), [{"label": "setosa"}] * 10),
        "digits 1 image": ("digits", rng.random((1, 1, 8, 8), dtype=np.float32), [{"label": "3"}]),
    }

    def timed(call: Callable[[], None], n: int = 5000) -> list[int]:
        times = []
        for _ in range(n):
            t = time.perf_counter_ns()
            call()
            times.append(time.perf_counter_ns() - t)
            time.sleep(0.0002)  # the monitor's thread runs between calls, as between real requests
        return sorted(times)

    print(
        "| case | inline p50 µs | inline p99 µs | hand-off p50 µs | hand-off p99 µs | inline/hand-off (p50) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for what, (model, batch, results) in cases.items():

            def handoff(m: str = model, b: np.ndarray = batch, r: list = results) -> None:
                mon.observe(m, "1", b, r)

            def inline(m: str = model, b: np.ndarray = batch, r: list = results) -> None:
                mon.observe(m, "1", b, r)
                mon._drain()  # the statistics on the caller's path: the baseline

            for _ in range(200):
                inline()
            mon.flush()
            a, h = timed(inline), timed(handoff)
            mid, tail = len(a) // 2, int(len(a) * 0.99)
            print(
                f"| {what} | {a[mid] / 1000:.2f} | {a[tail] / 1000:.2f} | {h[mid] / 1000:.2f} | "
                f"{h[tail] / 1000:.2f} | {a[mid] / h[mid]:.1f}x |"
            )
        floor = timed(lambda: _noop("iris", "1", batch, results))
        p50 = floor[len(floor) // 2] / 1000
        print(f"\nempty call of the same shape (the measuring floor): p50 {p50:.2f} µs")
        print(f"batches dropped by the hand-off's bound: {mon.dropped}")
    finally:
        mon.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
