"""ONNX Runtime (1.29+) keeps a device id and an event cache under the user's cache directory and
uploads telemetry from Linux too, unless ORT_DISABLE_TELEMETRY=1 is set before its first import.
The agent imports it with telemetry off (``load_ort``); the control shows what a bare import does,
so that the check below is known to see it.

ONNX Runtime also stays silent when it finds a CI system's variable (CI, GITHUB_ACTIONS, JENKINS_URL,
TF_BUILD, ...), so the subprocesses run in an environment of their own, with none of the caller's
variables: the control must see the writes on a CI runner too, where a device never runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MODELS, ROOT

MARK = Path("Microsoft") / "DeveloperTools" / ".onnxruntime"

AGENT = f"""
import sys, tempfile
from pathlib import Path
import numpy as np
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
state = Path(tempfile.mkdtemp()) / "store-state.json"
engine = Engine(ModelStore(Path({str(MODELS)!r}), state))
out = engine.predict("iris", {{"float_input": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}})
print(out.results[0]["label"])
"""


def run(code: str, tmp: Path, telemetry: str | None) -> tuple[str, list[Path]]:
    home, cache = tmp / "home", tmp / "cache"
    home.mkdir(parents=True, exist_ok=True)
    # Only what Python needs: a CI variable inherited from the runner would hide the writes.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(cache), "TMPDIR": str(tmp / "t")}
    (tmp / "t").mkdir(parents=True, exist_ok=True)
    if telemetry is not None:
        env["ORT_DISABLE_TELEMETRY"] = telemetry
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), [f for d in (home, cache) for f in d.rglob("*") if f.is_file()]


def test_the_agent_runs_onnx_models_without_telemetry(tmp_path: Path) -> None:
    label, written = run(AGENT, tmp_path, None)
    assert label == "setosa"
    assert written == [], written  # no device id, no event cache, nothing under HOME or the cache


def test_a_bare_import_writes_a_device_id_and_an_event_cache(tmp_path: Path) -> None:
    _, written = run("import onnxruntime", tmp_path, None)
    names = {p.name for p in written if MARK.as_posix() in p.as_posix()}
    assert {"deviceid", "onnxruntime.db"} <= names, written


def test_an_explicit_setting_is_respected(tmp_path: Path) -> None:
    code = "from edge_agent.runtime.backends.onnx import load_ort; load_ort()"
    _, written = run(code, tmp_path / "on", "0")
    assert any(MARK.as_posix() in p.as_posix() for p in written), written
    _, written = run(code, tmp_path / "off", "1")
    assert written == []
