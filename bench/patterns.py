"""Patterns benchmark: what each serving pattern costs and buys, measured in one run, one table.

Real role processes (``edge-agent serve``, ``worker`` x2, ``batch --now``, ``model@NAME`` x3,
``camera``, ``up``) on free loopback ports, real HTTP, tmp copies of the bundled models and a
tmp data directory; everything started here is stopped at the end, also on failure.

* prediction cache: face on ``tests/data/cat.jpg``, a miss (the image with a few random bytes
  appended after its JPEG end marker: a new cache key, the same decode) then a hit on the same
  bytes; server-side ``timings_ms.total`` and client-side HTTP latency (target: hit >= 10x faster);
  and a client that asks by digest first (``GET /v1/models/face/predictions/{sha256}``): a hit is
  that GET, a miss is its 404 plus the upload;
* data cache: cat.jpg registered with ``POST /data``, predicted by id with ``Cache-Control:
  no-cache`` (the prediction cache is skipped): ``timings_ms.preprocess`` of a miss (the item
  deleted and registered again) against a hit;
* async: submit latency (``POST /async/face`` -> 202), queued -> started with an idle worker,
  jobs/s drained by 1 and by 2 workers (jobs queued while the workers are SIGSTOPped, timed from
  SIGCONT to the last ``finished``), and an idle worker's CPU time over 30 s (``/proc``);
* batch: items/s of ``edge-agent batch --now`` and of ``BatchRunner.run_pending()`` on N iris
  rows, against a single-thread loop of ``Engine.predict`` per item (loop A) and a single-thread
  loop that also records each result in its own transaction (loop B);
* microservice: ``POST /microservice/iris`` (three model@NAME processes, in parallel) against
  the three models called in-process, one after another;
* camera: the role's frames/s, unthrottled (``EDGE_CAMERA__REALTIME=false``,
  ``EDGE_CAMERA__FPS=1000``, from its ``camera-status.json``), against the model alone in
  process on the same decoded frames;
* memory: VmRSS / VmHWM / PSS of every role of ``edge-agent up`` (8 roles) after a warm-up
  request through each, their sum with the supervisor's, against ``up --profile all-in-one``.

    .venv/bin/python bench/patterns.py                  # everything, 2-4 minutes
    .venv/bin/python bench/patterns.py --quick          # fewer samples, 3 s idle window, < 90 s
    .venv/bin/python bench/patterns.py --skip camera,memory --json out.json

Exit status: 0 when every section ran (targets met or not), 1 when a section failed, 2 on a
usage error. The machine is shared: compare the ratios within one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.machine import command_line, cpu_model, cpus_line, dist, load_text
from bench.common.table import markdown
from bench.patterns_camera import bench_camera
from bench.patterns_http import bench_caches, bench_microservice
from bench.patterns_jobs import bench_async, bench_batch
from bench.patterns_memory import bench_memory
from bench.patterns_support import (
    FULL,
    MODEL_NAMES,
    OVR,
    QUICK,
    SECTIONS,
    UP_ROLES,
    Ctx,
    Row,
    start_gateway,
)
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.engine import Engine, EngineOptions
from edge_agent.runtime.store import ModelStore
from tests.conftest import copy_models


# -- report ----------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "edge-agent": dist("edge-agent"),
        "numpy": np.__version__,
        "onnxruntime": dist("onnxruntime"),
        "ai-edge-litert": dist("ai-edge-litert"),
        "opencv": dist("opencv-python-headless"),
        "uvicorn": dist("uvicorn"),
        "fastapi": dist("fastapi"),
    }


def header_lines(argv: Sequence[str]) -> list[str]:
    v = versions()
    return [
        command_line(argv),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        cpus_line("every role and the in-process engine: 1 intra-op thread"),
        f"load average at start: {load_text()}",
    ]


def table_lines(rows: Sequence[Row]) -> list[str]:
    head = ["section", "what", "measured", "against", "ratio", "target"]
    body = [[r.section, r.what, r.measured, r.against, r.ratio, r.target] for r in rows]
    return markdown(head, body, left=range(len(head)))


FOOTNOTES = {
    "caches": [
        "Prediction cache: each pair is a miss (cat.jpg with 8 random bytes after its JPEG end marker: a "
        "new key, the same decode) then a hit on the same bytes, `POST /v1/models/face/predict`. Server = "
        "the answer's `timings_ms.total`; client = the HTTP round trip on one keep-alive connection "
        "(`http.client`), which also carries the 110 kB body up and the answer back on every request. "
        "By digest: the client sends the image's sha256 first (`GET /v1/models/face/predictions/{sha256}`, "
        "no body); a hit answers there, a miss (404 `prediction_not_cached`) costs that GET plus the upload.",
        "Data cache: `POST /v1/models/face/predict/data/{id}` with `Cache-Control: no-cache`; a miss "
        "decodes + letterboxes the stored JPEG (the item deleted and registered again first), a hit reads "
        "the stored tensor.",
    ],
    "microservice": [
        "Microservice: requests and in-process triples alternate; in-process = `Engine.predict` on "
        "iris_setosa, iris_versicolor, iris_virginica one after another in this process.",
    ],
    "async": [
        "Async: submit validates the image (decodes it) before queuing, then one SQLite commit. Drains: "
        "both workers are SIGSTOPped, the jobs submitted, one or both workers SIGCONTed; jobs/s = jobs / "
        "(last `finished` - SIGCONT); 1-worker and 2-worker drains alternate. Each job: decode cat.jpg + "
        "BlazeFace + one result transaction. Queued -> started: one job at a time, worker asleep in "
        "`select()` on its doorbell.",
    ],
    "batch": [
        "Batch: `batch --now` and `BatchRunner` (parallelism 2, chunk 32) predict a chunk per runtime "
        "call and record a chunk per transaction; loop A calls `Engine.predict` on one row at a time "
        "and stores nothing; loop B also records each result with its outbox entry in its own "
        "transaction (one fsync each, as the camera role does). Ratio = batch / loop A, batch / loop B.",
    ],
    "camera": [
        "Camera: frames/s = the role's `fps_avg` (first to last inferred frame) from camera-status.json; "
        "the role decodes, infers and commits one result per frame (a drop of 1 is the frame the reader "
        "held when `--max-frames` stopped it). In-process figures: median of rounds before and after "
        "the role run; model alone = `Engine.infer` on tensors prepared beforehand from the same "
        "decoded frames (what the raw model can do), the pipeline adds `transform` and `postprocess`.",
    ],
    "memory": [
        "Memory: `edge-agent up` with roles " + json.dumps(UP_ROLES) + ", after one request through "
        "each (face + iris predict, microservice, prep, one async job, a 64-item batch run; the camera "
        "plays a looped file at 2 fps). RSS counts shared pages (libraries) once per process, so the "
        "RSS sum overstates the total; PSS shares them out and adds up.",
    ],
}


def run_section(
    name: str, label: str, fn: Callable[[], tuple[list[Row], dict[str, Any]]], errors: dict[str, str]
) -> tuple[list[Row], dict[str, Any]]:
    print(f"  {label} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        rows, data = fn()
    except Exception as exc:  # one broken section must not hide the others' numbers
        errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"  {label}: FAILED: {errors[name]}", file=sys.stderr, flush=True)
        return [Row(label, "error (see below)", "-")], {"error": errors[name]}
    data["elapsed_s"] = time.perf_counter() - t0
    print(f"  {label}: {data['elapsed_s']:.1f} s", file=sys.stderr, flush=True)
    return rows, data


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer samples, a 3 s idle window (< 90 s in all)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SECTION",
        help=f"skip a section (repeat or comma-separate): {', '.join(SECTIONS)}",
    )
    args = p.parse_args(argv)
    skip = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    unknown = sorted(skip - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    args.skip = skip
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: every process is stopped


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    header = header_lines([sys.argv[0], *argv])
    print("\n".join(header), flush=True)
    wanted = [s for s in SECTIONS if s not in args.skip]
    rows: list[Row] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        models = copy_models(tmp / "models", MODEL_NAMES)
        engine = Engine(
            ModelStore(models, tmp / "bench-state" / "store-state.json"),
            EngineOptions(backend=BackendOptions(intra_op_threads=1, inter_op_threads=1)),
        )
        stack.callback(engine.close)
        for name in ("face", *OVR, "iris"):
            engine.model(name)
        ctx = Ctx(tmp, models, tmp / "data", cfg, args.quick, stack, engine, errors=errors)
        plan: list[tuple[str, str, Callable[[Ctx], tuple[list[Row], dict[str, Any]]]]] = [
            ("caches", "prediction and data cache", bench_caches),
            ("microservice", "microservice", bench_microservice),
            ("async", "async", bench_async),
            ("batch", "batch", bench_batch),
            ("camera", "camera", bench_camera),
            ("memory", "memory (edge-agent up)", bench_memory),
        ]
        needs_gateway = {"caches", "microservice", "async", "batch"} & set(wanted)
        if needs_gateway:
            print("  starting the gateway and model@NAME roles ...", file=sys.stderr, flush=True)
            try:
                start_gateway(ctx, with_services="microservice" in wanted)
            except Exception as exc:
                for name in sorted(needs_gateway):
                    errors[name] = f"gateway did not start: {type(exc).__name__}: {exc}"
        for name, label, fn in plan:
            if name not in wanted:
                continue
            if name in errors:
                rows.append(Row(label, "error (see below)", "-"))
                results[name] = {"error": errors[name]}
                continue
            section_rows, results[name] = run_section(name, label, functools.partial(fn, ctx), errors)
            rows += section_rows
    elapsed = time.perf_counter() - started
    end_load = load_text()
    print(f"load average at end: {end_load}")
    print()
    lines = table_lines(rows)
    notes = [""] + [n for s in wanted for n in FOOTNOTES[s]]
    notes += [f"ERROR: {name}: {msg}" for name, msg in errors.items()]
    print("\n".join([*lines, *notes]))
    print(f"\n(benchmark took {elapsed:.1f} s)", file=sys.stderr)
    if args.json is not None:
        doc = {
            "command": header[0].removeprefix("command: "),
            "versions": versions(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "load_start": header[-1].removeprefix("load average at start: "),
            "load_end": end_load,
            "quick": args.quick,
            "budget": asdict(cfg),
            "skipped": sorted(args.skip),
            "elapsed_s": elapsed,
            "rows": [asdict(r) for r in rows],
            "sections": results,
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
