"""Sync benchmark: results from the device's outbox to the cloud store, over a real MQTT broker.

One table, measured in one run, everything on this machine over loopback: a real mosquitto on
a free port, the real cloud ingest role (``python -m cloud_sync.cli ingest``) storing into a
real SQLite file, and real device sync roles (``python -m edge_agent.cli --data-dir D sync``),
each draining its own device SQLite file that this script fills with ``Storage.record_result``.

* **results/s, outbox -> cloud store** for ``batch_size`` 100 (the default) and 500 versus 1
  (one message per result), every other setting at its default (window of 10 messages). N
  results are recorded in one transaction while the role is connected and idle; the clock runs
  from that commit until the cloud database holds all N (polled every 5 ms). Rounds alternate
  between the paths; the table shows the median and the range.
* **raw paho**: the same ``Results`` payload bytes (encoded as the outbox encodes them), QoS 1,
  published by this script with a window of 10 messages (paho's in-flight limit) and TCP_NODELAY
  like the device, until the broker has PUBACKed every one. No subscriber is connected then, so
  nothing is stored: it is the ceiling of the device -> broker hop.
* **end-to-end latency** p50 / p99: results recorded one per transaction at a steady rate; from
  the result's ``created`` (set by ``record_result``) until the row is visible in the cloud
  database (polled every 2 ms; the cloud keeps only the ingest's *arrival* time, ``received``,
  which is also reported). For raw paho: publish -> PUBACK of single-result messages.
* **recovery**: the ingest is stopped (cloud down), 10,000 results are recorded on the device,
  the ingest is started again; the time from its start until all 10,000 are stored, each once.

Target: batched sync (default ``batch_size``) at least 5x one message per result.

    .venv/bin/python bench/sync.py                 # about 2 minutes
    .venv/bin/python bench/sync.py --quick         # under a minute, rough numbers
    .venv/bin/python bench/sync.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.machine import cpu_model, load_text
from bench.sync_cluster import Cluster, Device
from bench.sync_measure import Row, drain, exactly_once, latency, raw_rows, recovery
from bench.sync_procs import (
    BATCHED,
    BIG_BATCH,
    DEFAULTS,
    FULL,
    QUICK,
    START_TIMEOUT_S,
    TARGET_RATIO,
    WINDOW,
    BenchError,
    Budget,
    wait_for,
)
from bench.sync_report import (
    footnotes,
    fsync_ms,
    header_lines,
    table_lines,
    target_line,
    versions,
)


# -- main ----------------------------------------------------------------------------------------------
def run(
    cfg: Budget, workdir: Path, nodelay: bool, rows: list[Row], log: Callable[[str], None]
) -> dict[str, Any]:
    cluster = Cluster(workdir, nodelay)
    devices: list[Device] = []
    out: dict[str, Any] = {}
    try:
        cluster.start_broker()
        log("raw paho publish (no subscriber) ...")
        try:
            rows.extend(raw_rows(cluster, cfg))
        except Exception as exc:
            rows.append(
                Row("raw_batched", "raw paho publish -> broker PUBACK", BATCHED, "10", error=str(exc))
            )
        log("starting the ingest role and the sync roles ...")
        cluster.start_ingest()
        specs = (
            ("b100", f"sync: outbox -> cloud store, batched (default batch_size {BATCHED})", BATCHED),
            ("b500", f"sync: outbox -> cloud store, batched (batch_size {BIG_BATCH})", BIG_BATCH),
            ("b1", "sync: outbox -> cloud store, one message per result", 1),
        )
        for key, _, batch in specs:
            dev = Device(f"bench-{key}", batch, workdir)
            devices.append(dev)
            cluster.start_device(dev, cfg.ack_timeout_s)
        reader = cluster.open_reader()
        for dev in devices:
            assert dev.proc is not None
            dev.proc.wait_log("connected to the broker")

            def online(name: str = dev.name) -> bool:
                return bool(reader.query("SELECT 1 FROM devices WHERE id = ? AND online = 1", (name,)))

            wait_for(f"the birth message of {dev.name}", online, START_TIMEOUT_S, cluster.check)
        sync_rows = {key: Row(key, path, batch, str(WINDOW)) for key, path, batch in specs}
        by_dev = dict(zip(sync_rows, devices, strict=True))
        for i in range(cfg.rounds):
            for key, row in sync_rows.items():
                if row.error is not None:
                    continue
                n = cfg.single if row.batch == 1 else cfg.batched
                log(f"round {i + 1}/{cfg.rounds}: {by_dev[key].name}, {n} results ...")
                try:
                    drain(cluster, by_dev[key], n, row)
                except BenchError as exc:
                    row.error = str(exc)
        for key in ("b100", "b1"):
            row = sync_rows[key]
            if row.error is None:
                log(f"latency: {by_dev[key].name} at {cfg.rate:g}/s for {cfg.latency_s:g} s ...")
                try:
                    latency(cluster, by_dev[key], cfg, row)
                except BenchError as exc:
                    row.error = str(exc)
        rows.extend(sync_rows.values())
        for key in ("b500", "b1"):  # idle now; the recovery runs with the default device only
            proc = by_dev[key].proc
            if proc is not None:
                proc.stop()
        log(f"recovery: {cfg.backlog} results while the cloud is down ...")
        try:
            rows.append(recovery(cluster, by_dev["b100"], cfg))
        except BenchError as exc:
            rows.append(Row("recovery", "recovery", BATCHED, str(WINDOW), error=str(exc)))
        out["exactly_once"] = exactly_once(reader, devices)
    finally:
        cluster.close()
        for dev in devices:
            dev.close()
    return out


ORDER = ("b100", "b500", "b1", "raw_batched", "raw_single", "recovery")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small N, one round (smoke test, < 60 s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--broker-nodelay", action="store_true", help="mosquitto with `set_tcp_nodelay true`")
    p.add_argument("--workdir", type=Path, help="keep the databases and logs here (default: a temp dir)")
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the clean-up
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: every process is stopped


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    v = versions()
    header = header_lines([sys.argv[0], *argv], v)
    print("\n".join(header), flush=True)
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
        fsync = fsync_ms(workdir)
        try:
            out = run(cfg, workdir, args.broker_nodelay, rows, log)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    rows.sort(key=lambda r: ORDER.index(r.key) if r.key in ORDER else len(ORDER))
    by = {r.key: r for r in rows}
    single = by["b1"].rate if "b1" in by else 0.0
    once = out.get("exactly_once", {})
    lines = [
        "",
        *table_lines(rows, single),
        *footnotes(rows, cfg, args.quick, once, fsync, args.broker_nodelay),
        "",
        target_line(rows),
        f"load average at end: {load_text()}",
    ]
    print("\n".join(lines), flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)
    failed = any(r.error is not None for r in rows) or any(
        c["missing"] or c["extra"] or c["duplicates"] for c in once.values()
    )
    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": v,
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "fsync_ms": fsync,
            "quick": args.quick,
            "broker_nodelay": args.broker_nodelay,
            "budget": asdict(cfg),
            "sync_defaults": {
                "batch_size": BATCHED,
                "max_inflight_messages": WINDOW,
                "poll_interval_s": DEFAULTS.poll_interval_s,
                "ack_timeout_s": DEFAULTS.ack_timeout_s,
            },
            "target_ratio": TARGET_RATIO,
            "target": target_line(rows),
            "elapsed_s": elapsed,
            "rows": [asdict(r) | {"rate_median": r.rate} for r in rows],
            "exactly_once": once,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
