"""Runtime benchmark: raw onnxruntime / LiteRT calls versus the agent's runtime layer.

For every bundled model variant (one row each) it measures, in one run:

* batch-1 latency p50 / p99 of (a) the raw runtime call - an ``InferenceSession.run`` or
  LiteRT ``set_tensor`` + ``invoke`` + ``get_tensor`` on a session / interpreter this script
  creates itself with the agent's thread settings - and (b) ``Engine.predict(name, {input: x})``,
  which adds input validation, batch splitting, ZipMap outputs as arrays, (de)quantization and
  post-processing (top-k labels, BlazeFace decoding + NMS);
* batch-32 throughput of both, and the agent/raw ratio of the median batch-32 call time
  (target < 1.10: the runtime layer should add less than 10 % at batch 32).

Raw and agent calls alternate (a block of raw calls, then a block of agent calls, repeated)
so machine noise hits both equally; the table reports medians. The last line is the resident
memory of a fresh process holding every benchmarked model loaded through the Engine, next to
a bare ``python -c "import numpy"``.

    .venv/bin/python bench/runtime.py                 # all bundled models, 1-3 minutes
    .venv/bin/python bench/runtime.py --quick --models iris,face
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.machine import cpu_model
from bench.runtime_measure import Row, bench_model, measure_memory, new_engine, rss_only
from bench.runtime_raw import BATCH, FULL, MODELS, QUICK, SEED, TARGET_OVERHEAD
from bench.runtime_report import footnotes, header_lines, memory_line, table_lines, versions
from edge_agent.runtime.store import ModelStore


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a few iterations only (smoke test, < 20 s)")
    p.add_argument("--models", help="comma-separated model names (default: every bundled model)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, raw and agent (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bundled = ModelStore(MODELS, Path("/nonexistent/store-state.json")).names()
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else bundled
    unknown = [n for n in names if n not in bundled]
    if unknown or not names:
        print(f"unknown model(s) {unknown}; bundled: {', '.join(bundled)}", file=sys.stderr)
        return 2
    if args.rss_only:
        return rss_only(names, args.threads)

    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    header = header_lines([sys.argv[0], *argv], args.threads)
    print("\n".join(header), flush=True)
    rng = np.random.default_rng(SEED)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = new_engine(Path(tmp), args.threads)
        try:
            for name in names:
                print(f"  measuring {name} ...", file=sys.stderr, flush=True)
                try:
                    rows.append(bench_model(engine, name, args.threads, cfg, rng))
                except Exception as exc:  # one broken package must not hide the others' numbers
                    rows.append(Row(name, error=f"{type(exc).__name__}: {exc}"))
        finally:
            engine.close()
    print("  measuring memory (fresh processes) ...", file=sys.stderr, flush=True)
    mem = measure_memory(names, args.threads)

    print()
    lines = [*table_lines(rows), *footnotes(rows, cfg, args.quick), "", memory_line(mem, names, args.threads)]
    print("\n".join(lines))
    elapsed = time.perf_counter() - started
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)

    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": versions(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "threads": {"intra_op": args.threads, "inter_op": 1},
            "quick": args.quick,
            "budget": asdict(cfg),
            "batch": BATCH,
            "target_overhead": TARGET_OVERHEAD,
            "elapsed_s": elapsed,
            "models": [asdict(r) for r in rows],
            "memory": mem,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.error is not None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
