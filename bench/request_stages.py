"""Where a lone request's time goes in the gateway: one client, one request at a time, stage by stage.

The gateway (``edge-agent serve``, batching on, prediction cache off) runs pinned to one core with
``bench/stages_probe`` first on its ``PYTHONPATH``: that probe timestamps, inside the server, the
bytes' arrival, the app's entry, the JSON parse, the service (its input check and runtime call),
the answer's headers and body being written. The client (``bench/loadgen.py``'s HTTP/1.1
connection, on another core) sends the model's inputs one after the other and checks every answer
against the raw runtime, as ``bench/serving.py`` does. It prints the median of each stage over the
measured requests, per body format, beside the client's round trip:

    .venv/bin/python bench/request_stages.py                       # heavy CNN, JSON and binary
    .venv/bin/python bench/request_stages.py --model digits_int8 --formats json --requests 200

The server's own timestamps cost ~1 µs each (a dozen a request); the probe wraps functions, so the
stages are wall time on the server's core, including what the kernel does in its system calls
(``write`` wakes the client). Exit status: 0 when every answer was right, 1 otherwise, 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.serving_cases import prepare_case, requests_for
from bench.serving_servers import gateway

PROBE = Path(__file__).resolve().parent / "stages_probe"
FORMATS = ("json", "bin")
NAMES = {"json": "JSON (v1)", "bin": "binary (v2)"}
SERVER_CORE, CLIENT_CORE = 0, 1

# (label, from mark, to mark) between two marks of the probe; or (label, key) for a summed duration
STAGES: tuple[tuple[str, ...], ...] = (
    ("uvicorn: HTTP parsing, the request's task, until the app", "rx", "app"),
    ("fast path: checks, body, decode, until the service", "app", "svc0"),
    ("  of which the JSON parse (codec.loads)", "parse"),
    ("service", "svc0", "svc1"),
    ("  of which the input check", "check"),
    ("  of which the runtime call", "runtime"),
    ("answer built, until its headers are sent", "svc1", "start"),
    ("status line and headers written", "start", "start_done"),
    ("body written", "body", "end"),
    ("in the server, in all", "rx", "end"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", default="heavy_cnn", help="a model of bench/serving.py (default heavy_cnn)")
    p.add_argument("--formats", default="json,bin", help="comma-separated: json, bin (default both)")
    p.add_argument("--requests", type=int, default=500, help="measured requests per format (default 500)")
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring (default 100)")
    p.add_argument("--json", type=Path, help="also write the medians to this file")
    args = p.parse_args(argv)
    args.formats = [f for f in args.formats.split(",") if f]
    if not args.formats or any(f not in FORMATS for f in args.formats):
        p.error(f"--formats takes {', '.join(FORMATS)}")
    if args.requests < 1 or args.warmup < 0:
        p.error("--requests must be at least 1 and --warmup at least 0")
    return args


def stage_medians(rows: list[dict[str, int]]) -> dict[str, float]:
    """Each stage's median in µs over the probe's rows (a summed stage: 0 where a row lacks it)."""
    out: dict[str, float] = {}
    for stage in STAGES:
        if len(stage) == 3:
            _, a, b = stage
            vals = [(r[b] - r[a]) / 1000 for r in rows if a in r and b in r]
        else:
            vals = [r.get(stage[1], 0) / 1000 for r in rows]
        out[stage[0]] = statistics.median(vals) if vals else float("nan")
    return out


async def _drive(
    port: int, reqs: list[bytes], kind: str, expected: list[dict[str, Any]], n: int
) -> tuple[list[float], list[str]]:
    conn = await loadgen.connect("127.0.0.1", port)
    times: list[float] = []
    wrong: list[str] = []
    try:
        for i in range(n):
            k = i % len(reqs)
            t0 = time.perf_counter()
            status, body, ihcl = await conn.request(reqs[k])
            times.append((time.perf_counter() - t0) * 1e6)
            problem = loadgen.check_answer(kind, status, body, ihcl, expected[k])
            if problem:
                wrong.append(f"request {i}: {problem}")
    finally:
        conn.close()
    return times, wrong


def measure(case: Any, fmt: str, args: argparse.Namespace, tmp: Path) -> tuple[dict[str, float], list[str]]:
    out = tmp / f"stages-{fmt}.json"
    total = args.warmup + args.requests
    probe_env = {
        "BENCH_STAGES_OUT": str(out),
        "BENCH_STAGES_N": str(total),
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROBE), os.environ.get("PYTHONPATH", "")) if p),
    }
    with gateway(case, {"enabled": True}, SERVER_CORE, tmp, f"stages-{fmt}", probe_env) as gw:
        reqs, kind, expected = requests_for(case, "d", fmt, gw.port)
        times, wrong = asyncio.run(_drive(gw.port, reqs, kind, expected, total))
        deadline = time.monotonic() + 10
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
    if not out.is_file():
        raise RuntimeError(f"the gateway's probe wrote nothing: see {tmp}/stages-{fmt}-*.log")
    rows = json.loads(out.read_text())[args.warmup :]
    medians = stage_medians(rows)
    medians["client round trip"] = statistics.median(times[args.warmup :])
    medians["measured requests"] = float(len(rows))
    return medians, wrong


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    results: dict[str, dict[str, float]] = {}
    wrong: list[str] = []
    with tempfile.TemporaryDirectory(prefix="request-stages-") as d:
        tmp = Path(d)
        case = prepare_case(args.model, tmp)
        for fmt in args.formats:
            results[fmt], bad = measure(case, fmt, args, tmp)
            wrong += [f"{fmt}: {w}" for w in bad]
    labels = [s[0] for s in STAGES] + ["client round trip"]
    print(
        f"{args.model}: one client, one request at a time; medians in µs over "
        + ", ".join(f"{int(results[f]['measured requests'])} {NAMES[f]}" for f in args.formats)
        + " requests"
    )
    print("| stage | " + " | ".join(NAMES[f] for f in args.formats) + " |")
    print("| --- |" + " ---: |" * len(args.formats))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{results[f][label]:,.1f}" for f in args.formats) + " |")
    checked = (args.warmup + args.requests) * len(args.formats)
    print(f"{len(wrong)} wrong answers of {checked} checked")
    for w in wrong[:10]:
        print(f"  {w}")
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "stages_us": results, "wrong": len(wrong)}, indent=1)
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
