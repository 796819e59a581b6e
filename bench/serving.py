"""Serving benchmark: what HTTP serving costs on top of the raw runtime, and what batching buys.

One run, one table: for each model (``digits_int8``, the tiny int8 ONNX classifier whose
HTTP path is the whole cost; ``face``, the BlazeFace TFLite detector, fixed batch 1;
``heavy_cnn``, a CNN of about 1.6 ms per inference built here with random weights by
``bench/heavy_model.py``) and each concurrency (default 1, 8, 64) it measures:

(a) the raw runtime in this process (bare ``InferenceSession.run`` / LiteRT ``invoke``), at
    the batch size (of 1, 8, 32, 64 the model accepts) with the best rows/s: the limit;
(b) ``bench/naive_server.py``: a plain FastAPI endpoint with a pydantic ``{"data": ...}``
    body that calls the runtime once per request (the book's design);
(c) this gateway (``edge-agent serve``) with batching off (``EDGE_BATCHING``);
(d) the gateway with batching on (each model's manifest settings; ``face``, whose manifest
    turns batching off because its batch is fixed at 1, gets ``max_batch_size`` 16: the
    batcher gathers requests, the runtime still runs them one invoke each);

(c) and (d) with a JSON body (v1 ``{"data": [[...]]}``, the very bytes (b) gets) and with
binary tensors (v2 binary tensor extension: JSON header + raw little-endian FP32, binary
outputs back); ``face`` also with its PNG (v1 ``image/png`` body: decode + letterbox on
the server). Load comes from ``bench/loadgen.py``, a separate process on another core,
over real HTTP; servers are pinned to one core, the load generator to another. Every
answer is checked against the raw runtime's answer for the same input (tolerances: each
package's golden ``atol``/``rtol``; see loadgen.py). Mean batch size comes from the
gateway's ``/metrics``.

    .venv/bin/python bench/serving.py                       # everything, about 7 minutes
    .venv/bin/python bench/serving.py --nice -10            # on a shared machine (root)
    .venv/bin/python bench/serving.py --quick               # short windows, about a minute
    .venv/bin/python bench/serving.py --models digits_int8 --concurrency 1,8 --requests 50

The gateway's prediction cache is turned off (the inputs repeat). Other processes' CPU use
during every window is measured and shown: before each measurement the benchmark waits for a
quiet machine (at most 20 s each, 120 s in all), and ``--nice -10`` gives the benchmark and
its processes a session of their own at a higher priority, so that a busy machine disturbs
the figures less (rows measured beside more than 0.1 core of other work are flagged).

Exit status: 0 when every cell ran and every answer was right (targets met or not), 1 when
some answer was wrong or a cell failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving_cases import (
    DEFAULT_MODELS,
    DISTURBED,
    FORMAT_LABEL,
    FULL,
    GATEWAY_FORMATS,
    MODELS,
    PATH_LABEL,
    QUICK,
    Budget,
    prepare_case,
)
from bench.serving_measure import Row, add_ratios, bench_model
from bench.serving_report import machine, table, targets
from bench.serving_servers import QuietGate


def prioritise(nice: int) -> None:
    """Give this process, and every process it starts, scheduling priority ``nice``.

    With autogroup scheduling (the Linux default) nice only ranks processes of one session
    against each other, while sessions share the CPUs equally; so the benchmark moves into a
    session of its own (re-running itself under ``setsid --wait`` when it leads a process group,
    as under a shell) and sets that session's autogroup priority too. The caller's session is
    left as it was."""
    setsid = shutil.which("setsid")
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:  # a process-group leader cannot: run again in a new session
            if setsid is None:
                raise OSError("setsid(1) is needed to leave the process group") from None
            sys.stdout.flush()
            os.execv(setsid, [setsid, "--wait", sys.executable, *sys.orig_argv[1:]])
    with contextlib.suppress(OSError):
        if setsid and Path(setsid).samefile(f"/proc/{os.getppid()}/exe"):
            # under `setsid --wait`: an interrupted parent (Ctrl-C) must still stop this run cleanly
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Serving benchmark: raw runtime vs naive FastAPI vs the gateway (batching off/on)."
    )
    p.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated levels (default: %(default)s)")
    p.add_argument("--paths", default="a,b,c,d", help="which of a,b,c,d to run (default: all)")
    p.add_argument(
        "--formats",
        help=f"gateway bodies among {','.join(GATEWAY_FORMATS)} (png: image models only; "
        "default: json,bin,png; quick: json,bin)",
    )
    p.add_argument("--quick", action="store_true", help="short windows (smoke test): about a minute")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 4, quick 0.3)")
    p.add_argument("--warmup", type=float, help="discarded seconds per cell (default 1, quick 0.1)")
    p.add_argument(
        "--requests", type=int, help="fixed number of measured requests per cell instead of a duration"
    )
    p.add_argument(
        "--max-wait",
        type=float,
        help="before each measurement wait up to this many seconds for other processes to go quiet "
        "(default 20, quick 0)",
    )
    p.add_argument(
        "--max-wait-total",
        type=float,
        default=120.0,
        help="at most this many seconds of such waiting in the whole run (default %(default)s)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the benchmark and every process it starts (e.g. -10 on a shared "
        "machine, as root; default %(default)s: unchanged)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.paths = [x for x in args.paths.split(",") if x]
    args.formats = [
        f for f in (args.formats or ("json,bin" if args.quick else "json,bin,png")).split(",") if f
    ]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    known = set(DEFAULT_MODELS) | {d.name for d in MODELS.iterdir() if (d / "1").is_dir()}
    bad = [m for m in args.models if m not in known]
    if bad:
        p.error(f"unknown model(s) {bad}; known: {sorted(known)}")
    if not set(args.paths) <= set(PATH_LABEL):
        p.error("--paths takes a subset of a,b,c,d")
    if not set(args.formats) <= set(GATEWAY_FORMATS):
        p.error(f"--formats takes a subset of {','.join(GATEWAY_FORMATS)}")
    if not args.concurrency or min(args.concurrency) < 1 or (args.requests is not None and args.requests < 1):
        p.error("concurrency levels and --requests must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        try:
            prioritise(args.nice)  # may run this script again in a session of its own
        except OSError as exc:
            print(f"--nice {args.nice}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    base = QUICK if args.quick else FULL
    if args.max_wait is None:
        args.max_wait = 0.0 if args.quick else 20.0
    budget = Budget(
        warmup_s=base.warmup_s if args.warmup is None else args.warmup,
        duration_s=base.duration_s if args.duration is None else args.duration,
        raw_s=base.raw_s,
        pause_s=base.pause_s,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    usable = sorted(os.sched_getaffinity(0))
    cores: tuple[int | None, int | None] = (usable[0], usable[1]) if len(usable) >= 2 else (None, None)
    command = shlex.join(
        [Path(sys.executable).name, "bench/serving.py", *(sys.argv[1:] if argv is None else argv)]
    )
    info = machine(cores, len(usable))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(f"command: {command}")
    print(f"gateway revision: {info['revision']}")
    if cores[0] is None:
        print(
            f"machine: {info['cpu']}, {len(usable)} usable CPU: server and load generator SHARE it "
            "(no pinning)"
        )
    else:
        print(
            f"machine: {info['cpu']}, {len(usable)} usable CPUs; server pinned to core {cores[0]}, "
            f"load generator to core {cores[1]}; runtimes use 1 intra-op thread"
        )
    per_cell = (
        f"{args.requests} measured requests after max(10, 2 x concurrency) warm-up requests"
        if args.requests
        else f"{budget.warmup_s:g} s warm-up + {budget.duration_s:g} s measured"
    )
    print(f"budget per HTTP cell: {per_cell}; (a): {budget.raw_s:g} s per batch size")
    if args.nice:
        print(f"priority: nice {args.nice} for the benchmark, its servers and load generators (own session)")
    if cores[1] is not None:
        os.sched_setaffinity(0, {cores[1]})  # this process waits on the client core
    rows: list[Row] = []
    t_start = time.monotonic()
    gate = QuietGate(args.max_wait, args.max_wait_total, log)
    tmp = Path(tempfile.mkdtemp(prefix="edge-serving-bench-"))
    try:
        for name in args.models:
            t0 = time.monotonic()
            case = prepare_case(name, tmp)
            log(f"{name}: {len(case.inputs)} distinct inputs, references from the raw runtime")
            rows.extend(bench_model(case, args, budget, cores, tmp, log, gate))
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    add_ratios(rows)
    verdicts = targets(rows)
    print()
    print(table(rows))
    print()
    print(
        "req/s: answers per second in the measured window ((a): rows per second of back-to-back runtime "
        "calls); p50/p99: per request ((a): per runtime call). mean batch: rows per runtime call, from "
        "the gateway's /metrics. vs (b): req/s over (b)'s at the same concurrency; vs (a): over (a)'s "
        "rows/s. CPU: cores busy in the server / load-generator / any other process during the window; "
        f"⚠: other processes used over {DISTURBED} core, so that row's figures are disturbed."
    )
    print()
    print("Targets:")
    for t in verdicts:
        print(f"- {t.name}: {t.verdict}" + (f" — {t.detail}" if t.detail else ""))
    wrong = sum(r.wrong for r in rows)
    failed = [r for r in rows if r.failure]
    print()
    print(f"wrong answers: {wrong} of {sum(r.checked for r in rows)} checked; failed cells: {len(failed)}")
    cached = [r for r in rows if r.cache_hits]
    if cached:
        print(f"WARNING: the gateway's prediction cache answered in {len(cached)} cells: not inference")
    for r in rows:
        for ex in r.wrong_examples:
            print(f"  {r.model} {PATH_LABEL[r.path]} {FORMAT_LABEL[r.fmt]} c={r.concurrency}: {ex}")
    print(f"total time: {time.monotonic() - t_start:.0f} s")
    if args.json:
        doc = {
            "command": command,
            "machine": info,
            "budget": asdict(budget) | {"requests_per_cell": args.requests, "nice": args.nice},
            "rows": [asdict(r) for r in rows],
            "targets": [asdict(t) for t in verdicts],
            "wrong_answers": wrong,
            "failed_cells": len(failed),
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
