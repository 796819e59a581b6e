"""The README's main command: the fleet demo runs end to end on this machine."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_fleet_demo_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "demo/fleet.py"], capture_output=True, text=True, timeout=400, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "-> 2 online in the cloud" in text
    assert text.count("async jobs done") == 2
    assert "results from 2 devices" in text
    for dev in ("demo-a", "demo-b"):
        assert f"{dev}: active" in text
        assert f"{dev}: gateway now answers with iris version 2" in text
