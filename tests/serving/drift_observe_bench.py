"""Per-call cost of ``DriftMonitor.observe`` on the caller's path (in-process, perf_counter_ns), for
docs/model-updates.md ("Off the caller's path"). Not collected by pytest; run:

    .venv/bin/python tests/serving/drift_observe_bench.py

Requests are spaced by 0.2 ms so the monitor's thread runs between them, as between real requests.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
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
    try:
        for what, (model, batch, results) in cases.items():
            for _ in range(200):
                mon.observe(model, "1", batch, results)
            n, times = 5000, []
            for _ in range(n):
                t = time.perf_counter_ns()
                mon.observe(model, "1", batch, results)
                times.append(time.perf_counter_ns() - t)
                time.sleep(0.0002)
            times.sort()
            print(f"{what}: p50 {times[n // 2] / 1000:.2f} us  p99 {times[int(n * 0.99)] / 1000:.2f} us")
        print(f"dropped {getattr(mon, 'dropped', '-')}")
        floor = []
        for _ in range(5000):  # the same call shape doing nothing: the timer's and the call's own cost
            t = time.perf_counter_ns()
            _noop("iris", "1", batch, results)
            floor.append(time.perf_counter_ns() - t)
            time.sleep(0.0002)
        print(f"empty call (measuring floor): p50 {sorted(floor)[2500] / 1000:.2f} us")
    finally:
        mon.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
