"""Run ``schemathesis run`` as the docs tell an operator to (docs/http-api.md, docs/cloud-sync.md):
every check, every phase, this directory's config file for the server, against a real process.

The number of examples per operation is bounded so both runs together stay under about a minute
on a small machine; the seed is fixed so a failure reproduces with the same command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEED = 1
EXAMPLES = 20
PHASES = "examples,coverage,fuzzing,stateful"


def schemathesis_bin() -> str:
    found = Path(sys.executable).parent / "schemathesis"
    if not found.exists():  # fail rather than skip: the dev extra installs it
        raise AssertionError(
            f"schemathesis is not installed next to {sys.executable}: pip install -e '.[dev]'"
        )
    return str(found)


def conformance(
    config: str,
    schema_url: str,
    *,
    headers: dict[str, str] | None = None,
    examples: int = EXAMPLES,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``schemathesis --config-file tests/schemathesis/<config>.toml run <schema_url> --checks all ...``"""
    cmd = [schemathesis_bin(), "--config-file", str(HERE / f"{config}.toml"), "run", schema_url]
    cmd += ["--checks", "all", "--phases", PHASES, "--max-examples", str(examples), "--seed", str(SEED)]
    cmd += ["--no-color", "--request-timeout", "10", "--generation-database", "none"]
    for name, value in (headers or {}).items():
        cmd += ["--header", f"{name}: {value}"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"schemathesis did not finish in {timeout} s:\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
