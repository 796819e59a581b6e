"""Serving benchmark (bench/serving.py): the measurements, the raw runtime in this process and HTTP
load from bench/loadgen.py, one row each."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen
from bench.serving_cases import (
    FACE_BATCHING,
    FORMAT_LABEL,
    PATH_LABEL,
    RAW_BATCHES,
    ROOT,
    Budget,
    Case,
    requests_for,
)
from bench.serving_servers import QuietGate, Server, gateway, naive, spawn, stop


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    path: str  # a, b, c, d
    fmt: str
    concurrency: int | None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_batch: float | None = None
    checked: int = 0
    wrong: int = 0
    errors: int = 0
    server_cpu: float | None = None
    client_cpu: float | None = None
    other_cpu: float | None = None
    cache_hits: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    wrong_examples: list[str] = field(default_factory=list)
    failure: str | None = None
    vs_naive: float | None = None
    vs_raw: float | None = None


def run_raw(case: Case, budget_s: float, core: int | None) -> tuple[Row, dict[int, float]]:
    """(a): the raw runtime in this process, pinned to the server core; best of the batch sizes."""
    old = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    k = len(case.inputs)
    fixed = case.runner.fixed_batch
    sizes = [fixed] if fixed else list(RAW_BATCHES)
    per_size: dict[int, float] = {}
    best: Row | None = None
    other = 0.0
    try:
        for b in sizes:
            batches = [np.arange(j * b, (j + 1) * b) % k for j in range(min(k, 8))]
            xs = [np.ascontiguousarray(case.inputs[ix]) for ix in batches]
            for x in xs[:2]:
                case.runner.run(x)  # warm-up: allocations, kernel selection
            times: list[float] = []
            row = Row(case.name, "a", "tensor", None)
            jif0, cpu0, wall0 = loadgen.cpu_jiffies(), time.process_time(), time.perf_counter()
            end = time.perf_counter() + budget_s
            j = 0
            while time.perf_counter() < end or len(times) < 5:
                x, ix = xs[j % len(xs)], batches[j % len(xs)]
                t0 = time.perf_counter()
                outs = case.runner.run(x)
                times.append(time.perf_counter() - t0)
                j += 1
                for r, i in enumerate(ix):  # every row checked, outside the timed call
                    row.checked += 1
                    problem = _check_raw_row(case.runner.output_names, outs, r, case.expected[int(i)])
                    if problem:
                        row.wrong += 1
                        if len(row.wrong_examples) < loadgen.MAX_WRONG_EXAMPLES:
                            row.wrong_examples.append(f"batch {b} row {r}: {problem}")
            wall = time.perf_counter() - wall0
            own = (time.process_time() - cpu0) / wall
            row.other_cpu = round(max(0.0, loadgen.busy_cores(jif0, loadgen.cpu_jiffies()) - own), 3)
            other = max(other, row.other_cpu)
            t = np.array(times)
            row.rps = b * len(t) / float(t.sum())
            row.p50_ms = float(np.percentile(t, 50) * 1000)
            row.p99_ms = float(np.percentile(t, 99) * 1000)
            row.mean_batch = float(b)
            per_size[b] = row.rps
            if best is None or row.rps > (best.rps or 0.0):
                if best is not None:
                    row.checked += best.checked
                    row.wrong += best.wrong
                    row.wrong_examples = best.wrong_examples + row.wrong_examples
                best = row
            else:
                best.checked += row.checked
                best.wrong += row.wrong
                best.wrong_examples += row.wrong_examples
    finally:
        os.sched_setaffinity(0, old)
    assert best is not None
    best.wrong_examples = best.wrong_examples[: loadgen.MAX_WRONG_EXAMPLES]
    best.other_cpu = other
    return best, per_size


def _check_raw_row(names: list[str], outs: list[np.ndarray], r: int, exp: dict[str, Any]) -> str | None:
    for name, arr in zip(names, outs, strict=True):
        want = exp["raw"][name]
        got = arr[r : r + 1]
        problem = loadgen.close_enough(got, want, exp["atol"], exp["rtol"])
        if problem is None and exp.get("classification") == name:
            problem = loadgen.top_class(got, want, exp["atol"])
        if problem:
            return f"output {name}: {problem}"
    return None


def run_load(
    case: Case,
    server: Server,
    path: str,
    fmt: str,
    concurrency: Sequence[int],
    budget: Budget,
    requests: int | None,
    client_core: int | None,
    tmp: Path,
) -> list[Row]:
    reqs, kind, expected = requests_for(case, path, fmt, server.port)
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "requests": reqs,
        "check": kind,
        "expected": expected,
        "concurrency": list(concurrency),
        "warmup_s": budget.warmup_s,
        "duration_s": budget.duration_s,
        "requests_per_cell": requests,
        "pause_s": budget.pause_s,
        "metrics_path": "/metrics" if path in ("c", "d") else None,
        "model": case.name,
        "server_pid": server.proc.pid,
        "core": client_core,
    }
    spec_path = tmp / f"spec-{case.name}-{path}-{fmt}.pkl"
    out_path = spec_path.with_suffix(".json")
    with spec_path.open("wb") as fh:
        pickle.dump(spec, fh)
    per_cell = budget.warmup_s + budget.duration_s + budget.pause_s + 30.0
    if requests is not None:
        per_cell = 120.0
    log = spec_path.with_suffix(".log")
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), str(spec_path), str(out_path)]
    proc = spawn(cmd, client_core, os.environ.copy(), log)
    try:
        proc.wait(timeout=60 + per_cell * len(concurrency))
    except subprocess.TimeoutExpired:
        stop(proc)
    finally:
        stop(proc)
    rows: list[Row] = []
    if proc.returncode != 0 or not out_path.is_file():
        msg = f"load generator failed ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}"
        return [Row(case.name, path, fmt, c, failure=msg) for c in concurrency]
    for cell in json.loads(out_path.read_text()):
        rows.append(
            Row(
                case.name,
                path,
                fmt,
                cell["concurrency"],
                rps=cell["rps"],
                p50_ms=cell["p50_ms"],
                p99_ms=cell["p99_ms"],
                mean_batch=cell["mean_batch"],
                checked=cell["checked"],
                wrong=cell["wrong"],
                errors=cell["errors"],
                server_cpu=cell["server_cpu"],
                client_cpu=cell["client_cpu"],
                other_cpu=cell["other_cpu"],
                cache_hits=cell["cache_hits"],
                stage_ms=cell["stage_ms"],
                wrong_examples=cell["wrong_examples"],
            )
        )
    return rows


# -- the run ---------------------------------------------------------------------------------------
def bench_model(
    case: Case,
    args: argparse.Namespace,
    budget: Budget,
    cores: tuple[int | None, int | None],
    tmp: Path,
    log: Callable[[str], None],
    gate: QuietGate,
) -> list[Row]:
    server_core, client_core = cores
    rows: list[Row] = []
    conc = args.concurrency
    if "a" in args.paths:
        gate.wait()
        raw, per_size = run_raw(case, budget.raw_s, server_core)
        sizes = ", ".join(f"b{b}: {v:,.0f}" for b, v in per_size.items())
        log(f"  (a) raw runtime rows/s by batch size: {sizes}")
        rows.append(raw)
    formats = [f for f in args.formats if f != "png" or case.pngs]

    def load(server: Server, path: str, fmts: Sequence[str]) -> None:
        for fmt in fmts:
            gate.wait()
            t0 = time.monotonic()
            got = run_load(case, server, path, fmt, conc, budget, args.requests, client_core, tmp)
            rows.extend(got)
            summary = ", ".join(
                f"c{r.concurrency}: {r.rps or 0:,.0f} req/s"
                + (f" FAILED {r.failure[:200]}" if r.failure else "")
                for r in got
            )
            log(f"  {PATH_LABEL[path]} {FORMAT_LABEL[fmt]}: {summary} ({time.monotonic() - t0:.0f} s)")

    def guarded(path: str, start: Callable[[], Any], fmts: Sequence[str]) -> None:
        try:
            with start() as server:
                load(server, path, fmts)
        except RuntimeError as exc:
            log(f"  {PATH_LABEL[path]}: {exc}")
            rows.extend(Row(case.name, path, f, c, failure=str(exc)[:500]) for f in fmts for c in conc)

    if "b" in args.paths:
        guarded("b", lambda: naive(case, server_core, tmp), ["json"])
    if "c" in args.paths:
        guarded("c", lambda: gateway(case, {"enabled": False}, server_core, tmp, "gateway-off"), formats)
    if "d" in args.paths:
        on = FACE_BATCHING if case.runner.fixed_batch else {"enabled": True}
        guarded("d", lambda: gateway(case, on, server_core, tmp, "gateway-on"), formats)
    return rows


def add_ratios(rows: list[Row]) -> None:
    naive_rps = {(r.model, r.concurrency): r.rps for r in rows if r.path == "b" and r.rps}
    raw_rps = {r.model: r.rps for r in rows if r.path == "a" and r.rps}
    for r in rows:
        if r.rps is None:
            continue
        if r.path in ("c", "d") and naive_rps.get((r.model, r.concurrency)):
            r.vs_naive = r.rps / naive_rps[(r.model, r.concurrency)]
        if r.path != "a" and raw_rps.get(r.model):
            r.vs_raw = r.rps / raw_rps[r.model]
