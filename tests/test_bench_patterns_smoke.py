"""Smoke test of bench/patterns.py: ``--quick`` runs every section end to end over real processes
and prints a row for each. Never asserts on timings (a benchmark is not a timed test)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "patterns.py"
TIMEOUT_S = 110
# first cell of the table -> a phrase one of that section's rows must contain
ROWS = {
    "prediction cache": ["server `timings_ms.total`", "client HTTP latency"],
    "data cache": ["`timings_ms.preprocess`"],
    "microservice": ["POST /microservice/iris"],
    "async": [
        "submit: POST /async/face",
        "queued -> started",
        "drained by 1 worker",
        "drained by 2 workers",
        "idle worker CPU",
    ],
    "batch": ["loop A", "loop B", "`edge-agent batch --now`", "`BatchRunner.run_pending()`"],
    "camera": ["role, unthrottled", "in-process on the same decoded frames"],
    "memory": ["serve after warm-up", "camera after warm-up", "supervisor", "roles + supervisor: sum"],
}


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return run_bench(SCRIPT, args, timeout)


def test_quick_run_prints_a_row_for_every_section(tmp_path: Path) -> None:
    out_json = tmp_path / "patterns.json"
    proc = _run(["--quick", "--json", str(out_json)], TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("command: ")
    assert any(line.startswith("versions: ") for line in lines)
    assert any(line.startswith("CPUs: ") for line in lines)
    assert any(line.startswith("load average at start: ") for line in lines)
    assert any(line.startswith("load average at end: ") for line in lines)
    table = [line for line in lines if line.startswith("| ")]
    assert table and table[0].split("|")[1].strip() == "section", proc.stdout
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table[2:]]
    for section, phrases in ROWS.items():
        whats = [c[1] for c in cells if c[0] == section]
        assert whats, f"no {section} row:\n{proc.stdout}"
        for phrase in phrases:
            assert any(phrase in w for w in whats), f"no {section} row with {phrase!r}:\n{proc.stdout}"
    total = next(c for c in cells if c[0] == "memory" and "roles + supervisor: sum" in c[1])
    assert total[3].startswith("all-in-one: "), total  # measured, or "not available"
    assert "--quick" in next(c[1] for c in cells if "idle worker CPU" in c[1])
    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True and doc["errors"] == {}
    assert set(doc["sections"]) == {"caches", "microservice", "async", "batch", "camera", "memory"}


def test_skip_and_unknown_section() -> None:
    skipped = _run(["--quick", "--skip", "caches,microservice,async", "--skip=batch,camera,memory"], 60)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    table = [line for line in skipped.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2  # the header and its rule: nothing was measured
    unknown = _run(["--skip", "nope"], 60)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
