"""Patterns benchmark (bench/patterns.py): the async pattern (job queue and workers) and the batch
pattern (scheduled runs)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

# -- async ------------------------------------------------------------------------------------------
from bench.patterns_support import (
    CAT,
    JPEG,
    SEED,
    BenchError,
    Ctx,
    Http,
    Row,
    busy_ticks,
    clean_env,
    fms,
    fx,
    gateway,
    iris_rows,
    own_ticks,
    p50,
    pct,
    ratio,
    wait_for,
)
from edge_agent.storage import DB_NAME, Storage
from edge_agent.workers.batch import BatchRunner, RunnerOptions
from tests.conftest import ROOT
from tests.patterns.test_async import WorkerProc, _worker, context_switches, cpu_ticks


def _jobs_state(db: Path, ids: Sequence[str]) -> tuple[int, int, float | None]:
    """(finished, failed, latest finished time) of these jobs, read from the database."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        done = failed = 0
        last: float | None = None
        for k in range(0, len(ids), 500):
            chunk = list(ids[k : k + 500])
            marks = ",".join("?" * len(chunk))
            for status, count, latest in conn.execute(
                f"SELECT status, COUNT(*), MAX(finished) FROM jobs WHERE id IN ({marks}) "
                "AND status IN ('done', 'failed') GROUP BY status",
                chunk,
            ):
                done += int(count)
                failed += int(count) if status == "failed" else 0
                last = latest if last is None else max(last, latest)
        return done, failed, last
    finally:
        conn.close()


def _by_worker(db: Path, ids: Sequence[str]) -> dict[str, int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT lease_owner FROM jobs WHERE id IN ({marks})", list(ids)).fetchall()
    finally:
        conn.close()
    out: dict[str, int] = {}
    for (owner,) in rows:
        name = str(owner).rsplit("#", 1)[0]
        out[name] = out.get(name, 0) + 1
    return out


def bench_async(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, gw = ctx.cfg, gateway(ctx)
    db = ctx.data / DB_NAME
    client = Http(gw.url)
    workers: list[WorkerProc] = []
    others: list[float] = []  # cores busy with other processes' work during each drain

    def submit() -> tuple[str, float]:
        doc, ms = client.json("POST", "/async/face", CAT, JPEG, expect=(202,))
        return str(doc["job_id"]), ms

    def wait_jobs(ids: Sequence[str], timeout: float = 120.0) -> float:
        def finished() -> float | None:
            done, failed, last = _jobs_state(db, ids)
            if failed:
                raise BenchError(f"{failed} job(s) failed; see the worker logs in {ctx.data}")
            return last if done == len(ids) else None

        return float(wait_for(finished, timeout, f"{len(ids)} job(s)", step=0.01))

    def drain(active: Sequence[WorkerProc]) -> tuple[float, list[float], dict[str, int]]:
        """Queue the jobs while every worker is stopped, then let ``active`` drain them."""
        for w in workers:
            os.kill(w.proc.pid, signal.SIGSTOP)
        ids, submit_ms = [], []
        for _ in range(cfg.async_jobs):
            jid, ms = submit()
            ids.append(jid)
            submit_ms.append(ms)
        ours = [os.getpid(), gw.proc.pid, *(w.proc.pid for w in workers)]
        busy0, own0, m0 = busy_ticks(), own_ticks(ours), time.monotonic()
        t0 = time.time()
        for w in active:
            os.kill(w.proc.pid, signal.SIGCONT)
        last = wait_jobs(ids)
        busy1, own1, m1 = busy_ticks(), own_ticks(ours), time.monotonic()
        others.append(max(0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (m1 - m0))
        for w in workers:
            os.kill(w.proc.pid, signal.SIGCONT)  # the others wake, find nothing and sleep again
        return len(ids) / (last - t0), submit_ms, _by_worker(db, ids)

    with ExitStack() as procs:  # the workers stop at the end of this section
        try:
            w1 = procs.enter_context(_worker(ctx.models, ctx.data, "bench-1", {}))
            workers.append(w1)
            wait_jobs([submit()[0]])  # face loaded by the worker; the queue is empty
            time.sleep(0.3)
            pid = w1.proc.pid
            ticks0, switches0, t0 = cpu_ticks(pid), context_switches(pid), time.monotonic()
            time.sleep(cfg.idle_s)
            idle_ticks, idle_switches = cpu_ticks(pid) - ticks0, context_switches(pid) - switches0
            idle_s = time.monotonic() - t0
            idle_cpu_ms = idle_ticks * 1000.0 / os.sysconf("SC_CLK_TCK")

            wake = []
            for _ in range(cfg.wake_jobs):
                jid, _ms = submit()
                wait_jobs([jid])
                doc, _ = client.json("GET", f"/jobs/{jid}")
                wake.append((doc["started"] - doc["created"]) * 1000.0)
                time.sleep(0.05)  # the worker goes back to sleep in select()

            os.kill(w1.proc.pid, signal.SIGSTOP)  # the second worker warms up alone
            try:
                w2 = procs.enter_context(_worker(ctx.models, ctx.data, "bench-2", {}))
                workers.append(w2)
                wait_jobs([submit()[0]])
            finally:
                os.kill(w1.proc.pid, signal.SIGCONT)
            rates: dict[str, list[float]] = {"1": [], "2": []}
            submits: list[float] = []
            splits: list[dict[str, int]] = []
            for _ in range(cfg.drain_rounds):  # 1 and 2 workers alternate: the machine's noise on both
                for key, active in (("1", [w1]), ("2", [w1, w2])):
                    rate, submit_ms, split = drain(active)
                    rates[key].append(rate)
                    submits += submit_ms
                    if key == "2":
                        splits.append(split)
        finally:
            for w in workers:  # a stopped worker cannot handle the SIGTERM that stops it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
            client.close()

    rate1, rate2 = p50(rates["1"]), p50(rates["2"])
    split2: dict[str, int] = {}  # jobs per worker over the 2-worker drains
    for split in splits:
        for name, count in split.items():
            split2[name] = split2.get(name, 0) + count
    jobs = f"{cfg.drain_rounds} x {cfg.async_jobs} face jobs"
    window = f"{idle_s:.0f} s" + (" (--quick: 3 s, not 30)" if ctx.quick else "")
    rows = [
        Row(
            "async",
            f"submit: POST /async/face (cat.jpg) -> 202 (p50 of {len(submits)})",
            f"{fms(p50(submits))} (p95 {fms(pct(submits, 95))})",
        ),
        Row(
            "async",
            f"queued -> started, one idle worker: `started - created` (p50 of {len(wake)})",
            f"{fms(p50(wake))} (max {fms(max(wake))})",
        ),
        Row(
            "async",
            f"jobs/s drained by 1 worker (median of {jobs})",
            f"{rate1:.0f} jobs/s (other work on the machine meanwhile: {p50(others[0::2]):.1f} cores)",
        ),
        Row(
            "async",
            f"jobs/s drained by 2 workers (median of {jobs}; split {sorted(split2.values())})",
            f"{rate2:.0f} jobs/s (other work on the machine meanwhile: {p50(others[1::2]):.1f} cores)",
            f"1 worker {rate1:.0f} jobs/s",
            fx(ratio(rate2, rate1)),
        ),
        Row(
            "async",
            f"idle worker CPU over {window}: utime+stime, /proc",
            f"{idle_ticks} ticks = {idle_cpu_ms:.0f} ms CPU ({idle_cpu_ms / 10 / idle_s:.2f} % of a core), "
            f"{idle_switches} context switches",
        ),
    ]
    data = {
        "submit_ms": submits,
        "queued_to_started_ms": wake,
        "jobs_per_s": rates,
        "split_2_workers": splits,
        "other_cores_busy": others,
        "idle": {"seconds": idle_s, "ticks": idle_ticks, "cpu_ms": idle_cpu_ms, "switches": idle_switches},
    }
    return rows, data


# -- batch ------------------------------------------------------------------------------------------
SUMMARY = re.compile(r"batch run \w+: (\d+) done, (\d+) failed, (\d+) to retry.* in ([\d.]+) s")


def bench_batch(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, n = ctx.cfg, ctx.cfg.batch_items
    client = Http(gateway(ctx).url)
    try:
        rows_cli = iris_rows(n, SEED)
        doc, _ = client.json("POST", "/batch/items", {"model": "iris", "data": rows_cli}, expect=(201,))
        if doc["count"] != n:
            raise BenchError(f"registered {doc['count']} items, not {n}")
        cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(ctx.models)]
        cmd += ["--data-dir", str(ctx.data), "batch", "--now"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300)
        wall_s = time.perf_counter() - t0
        found = SUMMARY.search(proc.stdout)
        if proc.returncode != 0 or found is None:
            raise BenchError(
                f"batch --now exited {proc.returncode}: {proc.stdout[-500:]}{proc.stderr[-1500:]}"
            )
        done, failed, retried, run_s = int(found[1]), int(found[2]), int(found[3]), float(found[4])
        if (done, failed, retried) != (n, 0, 0):
            raise BenchError(f"batch --now: {found[0]}")
        cli_rate = done / run_s

        rows_api = iris_rows(n, SEED + 1)
        client.json("POST", "/batch/items", {"model": "iris", "data": rows_api}, expect=(201,))
    finally:
        client.close()
    storage = Storage.in_dir(ctx.data)
    try:
        stats = BatchRunner(ctx.engine, storage, RunnerOptions()).run_pending()
    finally:
        storage.close()
    if (stats.done, stats.failed) != (n, 0):
        raise BenchError(f"BatchRunner: {stats.summary()}")

    x = np.asarray(rows_cli, np.float32)
    ctx.engine.predict("iris", {"float_input": x[:1]})
    t0 = time.perf_counter()
    for row in x:
        ctx.engine.predict("iris", {"float_input": row[None]})
    loop_a = n / (time.perf_counter() - t0)

    m = min(n, cfg.loop_record_max)
    loop_store = Storage.in_dir(ctx.tmp / "loop-data")  # a database of its own, on the same disk
    try:
        t0 = time.perf_counter()
        for row in x[:m]:
            pred = ctx.engine.predict("iris", {"float_input": row[None]})
            with loop_store.transaction() as conn:
                loop_store.record_result(
                    conn, source="bench", model=pred.model, version=pred.version, body=pred.results[0]
                )
        loop_b = m / (time.perf_counter() - t0)
    finally:
        loop_store.close()

    against = f"loop A {loop_a:,.0f} / loop B {loop_b:,.0f} items/s"
    rows = [
        Row("batch", f"loop A: single thread, `Engine.predict` per item, {n} rows", f"{loop_a:,.0f} items/s"),
        Row(
            "batch",
            f"loop B: single thread, predict + record each result (1 transaction each), {m} rows",
            f"{loop_b:,.0f} items/s",
        ),
        Row(
            "batch",
            f"`edge-agent batch --now`, {n} iris rows (run time from its summary)",
            f"{cli_rate:,.0f} items/s ({n / wall_s:,.0f} incl. process start)",
            against,
            f"{fx(ratio(cli_rate, loop_a))} / {fx(ratio(cli_rate, loop_b))}",
        ),
        Row(
            "batch",
            f"`BatchRunner.run_pending()` in-process, {n} iris rows",
            f"{stats.items_per_s:,.0f} items/s",
            against,
            f"{fx(ratio(stats.items_per_s, loop_a))} / {fx(ratio(stats.items_per_s, loop_b))}",
        ),
    ]
    data = {
        "items": n,
        "cli": {"items_per_s": cli_rate, "run_s": run_s, "wall_s": wall_s, "summary": found[0]},
        "runner": {"items_per_s": stats.items_per_s, "elapsed_s": stats.elapsed_s},
        "loop_predict": {"items": n, "items_per_s": loop_a},
        "loop_predict_record": {"items": m, "items_per_s": loop_b},
    }
    return rows, data
