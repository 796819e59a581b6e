"""The image check is wired in: `make image` builds firmware_images/Dockerfile with buildah and
runs it, CI runs it after `make test`, and the Dockerfile keeps the official base as its default.

The build itself (minutes, root, buildah) is not run here: it is the `make image` step of
.ci/run, which fails when the image does not build or its health check, /predict or
`edge-agent backends` fail inside it. These tests fail when that wiring goes away.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FW = ROOT / "firmware_images"
CHECK = FW / "image" / "check.sh"
SMOKE = FW / "image" / "smoke.sh"
OFFICIAL_BASE = "python:3.11-slim-bookworm"


def _make_recipe(target: str) -> list[str]:
    """The commands `make -n TARGET` would run (make itself parses the Makefile)."""
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"make -n {target} failed:\n{proc.stderr}"
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_make_image_installs_buildah_and_runs_the_image_check() -> None:
    recipe = _make_recipe("image")
    assert any("scripts/sysdeps.sh" in line and "buildah:" in line for line in recipe), recipe
    assert any(shlex.split(line)[-1:] == ["firmware_images/image/check.sh"] for line in recipe), recipe


def test_ci_runs_make_image_after_make_test() -> None:
    steps = [
        line.split("#", 1)[0].strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert "make test" in steps and "make image" in steps, steps
    assert steps.index("make image") > steps.index("make test"), steps


def test_dockerfile_keeps_the_official_base_as_default_and_uses_the_argument_everywhere() -> None:
    text = (FW / "Dockerfile").read_text()
    args = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert args == [OFFICIAL_BASE], args
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms


def test_check_builds_with_a_local_base_and_keeps_the_healthcheck() -> None:
    text = CHECK.read_text()
    build = text[text.index(" bud ") :]
    build = build[: build.index("\n    {")]
    assert '--build-arg "PYTHON_IMAGE=$BASE"' in build
    assert "--format docker" in build, "OCI format drops HEALTHCHECK: the run step reads it from the config"
    assert "--pull=never" in build, "no registry is needed: the base comes from local storage"
    assert "debootstrap" in text and "python3-venv" in text


def test_image_scripts_are_executable_shell_that_parses() -> None:
    for script in (CHECK, SMOKE):
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr


def test_smoke_checks_health_predict_and_backends_and_fails_loudly() -> None:
    text = SMOKE.read_text()
    assert re.search(r"^set -eu$", text, flags=re.M), "the smoke must stop at the first failing step"
    for needed in ("SMOKE_HEALTHCHECK", "/predict", "edge-agent backends"):
        assert needed in text, needed
