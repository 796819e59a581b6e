"""Serving benchmark (bench/serving.py): targets, the table and the machine description."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import heavy_model
from bench.serving_cases import (
    DISTURBED,
    FORMAT_LABEL,
    PATH_LABEL,
    ROOT,
    TARGET_HEAVY_JSON_VS_RAW,
    TARGET_HEAVY_VS_RAW,
    TARGET_IDLE_P50,
    TARGET_TINY_VS_NAIVE,
)
from bench.serving_measure import Row


def _find(rows: list[Row], model: str, path: str, fmt: str | None, conc: int | None) -> Row | None:
    for r in rows:
        if r.model == model and r.path == path and (fmt is None or r.fmt == fmt) and r.concurrency == conc:
            return r if r.rps else None
    return None


@dataclass
class Target:
    name: str
    verdict: str  # met, missed, not measured
    detail: str


def _noise(*rows: Row | None) -> str:
    bad = [r for r in rows if r is not None and disturbed(r)]
    if not bad:
        return ""
    worst = max(r.other_cpu or 0.0 for r in bad)
    return f" (⚠ measured while other processes used up to {worst:.2f} core)"


def targets(rows: list[Row]) -> list[Target]:
    out: list[Target] = []
    # 1. tiny model: (d) at 64 >= 2x (b)
    d, b = _find(rows, "digits_int8", "d", "json", 64), _find(rows, "digits_int8", "b", None, 64)
    if d and b and d.rps and b.rps:
        ratio = d.rps / b.rps
        bin_d = _find(rows, "digits_int8", "d", "bin", 64)
        extra = f"; with binary tensors {bin_d.rps / b.rps:.2f}x" if bin_d and bin_d.rps else ""
        out.append(
            Target(
                f"digits_int8, c=64: (d) >= {TARGET_TINY_VS_NAIVE}x (b) req/s",
                "met" if ratio >= TARGET_TINY_VS_NAIVE else "MISSED",
                f"(d) JSON {d.rps:,.0f} req/s vs (b) {b.rps:,.0f} req/s = {ratio:.2f}x{extra}{_noise(d, b)}",
            )
        )
    else:
        out.append(Target(f"digits_int8, c=64: (d) >= {TARGET_TINY_VS_NAIVE}x (b)", "not measured", ""))
    # 2. heavy model: (d) at 64 >= 90% of (a) with binary tensors, >= 85% with JSON
    ha = _find(rows, heavy_model.NAME, "a", None, None)
    for fmt, label, goal in (
        ("bin", "binary", TARGET_HEAVY_VS_RAW),
        ("json", "JSON", TARGET_HEAVY_JSON_VS_RAW),
    ):
        hd = _find(rows, heavy_model.NAME, "d", fmt, 64)
        name = f"{heavy_model.NAME}, c=64: (d) {label} >= {goal:.0%} of (a)"
        if hd and ha and hd.rps and ha.rps:
            ratio = hd.rps / ha.rps
            detail = (
                f"(d) {label} {hd.rps:,.0f} req/s vs (a) {ha.rps:,.0f} rows/s "
                f"(batch {ha.mean_batch:.0f}) = {ratio:.0%}{_noise(hd, ha)}"
            )
            out.append(Target(name, "met" if ratio >= goal else "MISSED", detail))
        else:
            out.append(Target(name, "not measured", ""))
    # 3. idle batcher: c=1 p50 of (d) <= 0.8x (b), every model, same JSON body
    parts, verdicts = [], []
    for model in dict.fromkeys(r.model for r in rows):
        d1, b1 = _find(rows, model, "d", "json", 1), _find(rows, model, "b", None, 1)
        if d1 and b1 and d1.p50_ms and b1.p50_ms:
            ratio = d1.p50_ms / b1.p50_ms
            verdicts.append(ratio <= TARGET_IDLE_P50)
            bin1 = _find(rows, model, "d", "bin", 1)
            extra = f", binary {bin1.p50_ms:.3f} ms" if bin1 and bin1.p50_ms else ""
            parts.append(
                f"{model} {d1.p50_ms:.3f} vs {b1.p50_ms:.3f} ms = {ratio:.2f}x{extra}{_noise(d1, b1)}"
            )
    name = f"c=1: (d) p50 <= {TARGET_IDLE_P50}x (b) p50 (JSON, every model)"
    if verdicts:
        out.append(Target(name, "met" if all(verdicts) else "MISSED", "; ".join(parts)))
    else:
        out.append(Target(name, "not measured", ""))
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def disturbed(r: Row) -> bool:
    return r.other_cpu is not None and r.other_cpu > DISTURBED


def table(rows: list[Row]) -> str:
    head = (
        "| model | path | body | conc | req/s | p50 ms | p99 ms | mean batch | wrong/checked"
        " | vs (b) | vs (a) | server CPU | loadgen CPU | other CPU |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        path = PATH_LABEL[r.path]
        if r.path == "a" and r.mean_batch:
            path += f", batch {r.mean_batch:.0f}"
        if r.failure:
            lines.append(
                f"| {r.model} | {path} | {FORMAT_LABEL[r.fmt]} | {r.concurrency} | FAILED |" + " |" * 9
            )
            continue
        wrong = f"{r.wrong}/{r.checked}" + (f" ({r.errors} errors)" if r.errors else "")
        batch = "–" if r.mean_batch is None else f"{r.mean_batch:.1f}"
        cells = [
            r.model,
            path,
            FORMAT_LABEL[r.fmt],
            "–" if r.concurrency is None else str(r.concurrency),
            _fmt(r.rps, ",.0f") + (" ⚠" if disturbed(r) else ""),
            _fmt(r.p50_ms, ".3f"),
            _fmt(r.p99_ms, ".3f"),
            batch,
            wrong,
            "–" if r.vs_naive is None else f"{r.vs_naive:.2f}x",
            "–" if r.vs_raw is None else f"{r.vs_raw:.0%}",
            _fmt(r.server_cpu, ".2f"),
            _fmt(r.client_cpu, ".2f"),
            _fmt(r.other_cpu, ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def revision() -> str:
    """The commit measured, "+ local changes" when edge_agent/ differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "edge_agent"], cwd=ROOT, check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + local changes in edge_agent/" if dirty.returncode else "")


def machine(cores: tuple[int | None, int | None], n_cpu: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("onnxruntime", "ai-edge-litert", "fastapi", "uvicorn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "revision": revision(),
        "cpu": cpu,
        "cpus_usable": n_cpu,
        "server_core": cores[0],
        "loadgen_core": cores[1],
        "python": platform.python_version(),
        "packages": versions,
    }
