"""The main job for now: every bundled model, its golden self-test, and a
prediction on each of its sample inputs, printed with timings."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent import render
from edge_agent.errors import EdgeAgentError
from edge_agent.inputs_io import IMAGE_SUFFIXES, read_input_file
from edge_agent.runtime.engine import Engine

SAMPLE_SUFFIXES = IMAGE_SUFFIXES | {".json", ".npy"}


def run_demo(engine: Engine, models: list[str] | None = None, out: object = print) -> bool:
    say = out if callable(out) else print
    names = models or engine.store.names()
    ok = True
    say(f"model store: {engine.store.root}  ({len(names)} models)\n")
    for name in names:
        t0 = time.perf_counter()
        try:
            model = engine.model(name)
        except EdgeAgentError as exc:
            ok = False
            say(f"!! {name}: cannot load: {exc.message}\n")
            continue
        version = engine.active_version(name) or "?"
        report = engine.reports.get((name, version))
        m = model.manifest
        acc = f", held-out accuracy {m.metrics.heldout_accuracy:.2%}" if m.metrics else ""
        say(
            f"== {name}/{version} ({m.backend}, {m.task}{acc}); loaded + self-test "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms: {report.message if report else ''}"
        )
        samples = engine.store.package_dir(name, version) / "samples"
        files = (
            sorted(p for p in samples.glob("*") if p.suffix.lower() in SAMPLE_SUFFIXES)
            if samples.is_dir()
            else []
        )
        if not files:
            say("   (no sample inputs)")
        for path in files:
            try:
                tensors, images = read_input_file(Path(path), m)
                first = engine.predict(name, tensors, images=images)
                pred = engine.predict(name, tensors, images=images)  # warm: imports and caches done
                say(
                    render.prediction_text(pred, path.name).replace(
                        "]\n", f"; first call {first.timings_ms['total']:.1f} ms]\n", 1
                    )
                )
            except EdgeAgentError as exc:
                ok = False
                say(f"!! {name} <- {path.name}: {exc.message}")
        say("")
    return ok
