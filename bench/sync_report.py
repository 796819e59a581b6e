"""Sync benchmark (bench/sync.py): the header, the table, its footnotes and the target line."""

from __future__ import annotations

import math
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import edge_agent
from bench.common.machine import command_line, cpus_line, dist, load_text
from bench.common.table import markdown
from bench.sync_measure import Row
from bench.sync_procs import (
    BATCHED,
    DEFAULTS,
    LATENCY_POLL_S,
    MOSQUITTO,
    TARGET_RATIO,
    THROUGHPUT_POLL_S,
    WINDOW,
    Budget,
)


# -- report --------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10, check=False)
        m = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
        mosquitto = m.group(1) if m else "unknown"
    except OSError:
        mosquitto = "not found"
    return {
        "python": platform.python_version(),
        "edge-agent": edge_agent.__version__,
        "mosquitto": mosquitto,
        "paho-mqtt": dist("paho-mqtt"),
        "pydantic": dist("pydantic"),
        "sqlite": sqlite3.sqlite_version,
    }


def fsync_ms(directory: Path, count: int = 20) -> float:
    """Median time of a 4 KiB write + fsync in ``directory`` (both SQLite files live there)."""
    times = []
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(1000 * (time.perf_counter() - t0))
    finally:
        os.close(fd)
        os.unlink(name)
    return statistics.median(times)


def header_lines(argv: Sequence[str], v: dict[str, str]) -> list[str]:
    return [
        command_line(argv),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        cpus_line(),
        f"load average at start: {load_text()}",
    ]


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def table_lines(rows: Sequence[Row], single_rate: float) -> list[str]:
    head = [
        "path",
        "batch",
        "window",
        "results",
        "time s",
        "results/s",
        "× one-per-result",
        "e2e p50 ms",
        "e2e p99 ms",
        "CPU % dev·broker·cloud",
        "CPU wait % dev·broker·cloud",
        "machine busy %",
    ]
    body: list[list[str]] = []
    for r in rows:
        if r.error is not None or not r.rates:
            body.append([r.path, str(r.batch), r.window, *(["error"] * 9)])
            continue
        rate = _n(r.rate)
        if len(r.rates) > 1:
            rate += f" ({_n(min(r.rates))}-{_n(max(r.rates))})"
        cpu = r.median_cpu()
        raw = r.key.startswith("raw")

        def trio(suffix: str, cpu: dict[str, float] = cpu, raw: bool = raw) -> str:
            cloud = "-" if raw else f"{cpu['cloud' + suffix]:.0f}"
            return f"{cpu['dev' + suffix]:.0f} · {cpu['broker' + suffix]:.0f} · {cloud}"

        body.append(
            [
                r.path,
                str(r.batch),
                r.window,
                _n(r.results),
                f"{statistics.median(r.seconds):.2f}",
                rate,
                f"{r.rate / single_rate:.1f}×" if single_rate > 0 and r.key != "recovery" else "-",
                _ms(r.latency.get("p50_ms")),
                _ms(r.latency.get("p99_ms")),
                trio(""),
                trio("_wait"),
                f"{cpu['machine']:.0f}",
            ]
        )
    return markdown(head, body, left={0, 2})


def footnotes(
    rows: Sequence[Row],
    cfg: Budget,
    quick: bool,
    once: dict[str, dict[str, int]],
    fsync: float,
    nodelay: bool,
) -> list[str]:
    by = {r.key: r for r in rows}
    rounds = f"{cfg.rounds} rounds, paths alternating; median (range)" if cfg.rounds > 1 else "1 round"
    ack = cfg.ack_timeout_s or DEFAULTS.ack_timeout_s
    lines = [
        "",
        f"Sync rows: the sync role as a process (`python -m edge_agent.cli sync`), defaults but `batch_size` "
        f"(window {WINDOW} messages, poll_interval_s {DEFAULTS.poll_interval_s:g}, ack_timeout_s {ack:g}"
        f"{' (--quick)' if cfg.ack_timeout_s else ''}), the cloud ingest role as a process "
        f"(`python -m cloud_sync.cli ingest`, defaults: synchronous=FULL, up to 64 messages per "
        f"transaction), mosquitto {'with' if nodelay else 'without'} `set_tcp_nodelay`, persistence off; "
        f"results of ~200 bytes. results/s = N / (commit of N results recorded at once on the device -> "
        f"all N rows in the cloud database, polled every {1000 * THROUGHPUT_POLL_S:g} ms; it includes the "
        f"up to poll_interval_s before the idle role looks at its outbox); {rounds}.",
        "Raw rows: this script publishes the same Results payload bytes (QoS 1, MQTT 5, TCP_NODELAY, "
        f"paho in-flight window {WINDOW}; the batch-{BATCHED} messages of one batched drain, "
        f"{cfg.raw_repeat} times over) to the same broker until every PUBACK is in; no subscriber is "
        "connected then, so nothing is forwarded or stored: the ceiling of the device -> broker hop. "
        "dev CPU = this script.",
        f"e2e: results recorded one per transaction at {cfg.rate:g}/s for {cfg.latency_s:g} s; `created` "
        f"(device clock, set in `record_result` before its commit) -> row visible in the cloud database "
        f"(polled every {1000 * LATENCY_POLL_S:g} ms, same clock). Raw: publish -> PUBACK of one-result "
        "messages at the same rate.",
    ]
    for key in ("b100", "b1"):
        r = by.get(key)
        if r is not None and r.latency:
            lat = r.latency
            lines.append(
                f"  {r.path}: created -> arrival at the ingest (its `received` column, before its commit) "
                f"p50 {_ms(lat['received_p50_ms'])} ms, p99 {_ms(lat['received_p99_ms'])} ms; "
                f"{lat['n']} results, recorded at {lat['rate_achieved']:.0f}/s."
            )
    lines.append(
        "CPU % = CPU time / wall time of the measured interval, per process, all its threads (100 = one "
        "core); CPU wait % = time its threads were runnable but waiting for a CPU (schedstat run-queue "
        "delay) / wall time: CPU taken by other processes, this machine's other work included. dev = the "
        "sync role (raw: this script), broker = mosquitto, cloud = the ingest role. machine busy % = all "
        f"cores, 100 = every core busy. fsync of a 4 KiB write here: {fsync:.1f} ms (median of 20)."
    )
    per_result = []
    for key in ("b100", "b500", "b1"):
        r = by.get(key)
        if r is not None and r.error is None and r.cpu:
            us = {
                role: statistics.median(
                    c[role] / 100 * t / r.results * 1e6 for c, t in zip(r.cpu, r.seconds, strict=True)
                )
                for role in ("dev", "cloud")
            }
            per_result.append(
                f"batch_size {r.batch}: sync role {us['dev']:.0f} µs, ingest {us['cloud']:.0f} µs"
            )
    if per_result:
        lines.append("CPU time per result (median): " + "; ".join(per_result) + ".")
    rec = by.get("recovery")
    if rec is not None and rec.error is None and rec.extra:
        x = rec.extra
        ready = "-" if x["ingest_ready_s"] is None else f"{x['ingest_ready_s']:.1f}"
        drain_s = x["drain_after_first_s"]
        drain = f": {cfg.backlog / drain_s:,.0f} results/s" if drain_s >= 0.1 else ""
        text = (
            f"Recovery: ingest stopped, {cfg.backlog:,} results recorded at once, cloud down "
            f"{cfg.down_s:g} s, ingest started. From its start: subscribed after {ready} s, first result "
            f"stored after {x['first_stored_s']:.1f} s, all {cfg.backlog:,} after {x['all_stored_s']:.1f} s "
            f"({drain_s:.1f} s from the first{drain}), outbox empty after {x['outbox_empty_s']:.1f} s."
        )
        if x["sent_while_down"] and x["first_stored_after_send_s"] is not None:
            text += (
                f" While the cloud was down the role sent {x['sent_while_down']:,} results (its window of "
                f"{WINDOW} messages); no ingest session held them, so the broker discarded them; the first "
                f"result was stored {x['first_stored_after_send_s']:.1f} s after that send (ack_timeout_s = "
                f"{x['ack_timeout_s']:g}: until then the window stays full and nothing is sent)."
            )
        text += (
            f" Stored {x['distinct']:,} of {cfg.backlog:,} ids: {x['missing']} missing, {x['duplicates']} "
            f"duplicate rows; results acknowledged by the ingest beyond those stored (re-deliveries): "
            f"{x['deliveries_beyond_stored']}."
        )
        lines.append(text)
    bad = {d: c for d, c in once.items() if c["missing"] or c["extra"] or c["duplicates"] or c["outbox_left"]}
    total = sum(c["recorded"] for c in once.values())
    if once and not bad:
        lines.append(
            f"Exactly once: all {total:,} results recorded on the benchmark's devices are in the cloud "
            "store once each (0 missing, 0 extra, 0 duplicate rows), and every outbox is empty."
        )
    for d, c in bad.items():
        lines.append(f"WARNING: {d}: {c}")
    if quick:
        lines.append("--quick: small N, one round, short ack_timeout_s: the numbers are rough.")
    for r in rows:
        if r.error is not None:
            lines.append(f"ERROR: {r.path}: {r.error}")
    return lines


def target_line(rows: Sequence[Row]) -> str:
    by = {r.key: r for r in rows}
    batched, single = by.get("b100"), by.get("b1")
    if batched is None or single is None or not batched.rates or not single.rates:
        return (
            f"target: batched (batch_size {BATCHED}) >= {TARGET_RATIO:g}x one message per result: "
            "not measured"
        )
    ratio = batched.rate / single.rate
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    return (
        f"target: batched sync (batch_size {BATCHED}) >= {TARGET_RATIO:g}x one message per result: {verdict} "
        f"({_n(batched.rate)} vs {_n(single.rate)} results/s = {ratio:.1f}x)"
    )
