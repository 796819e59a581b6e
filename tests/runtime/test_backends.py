"""Backend availability: a missing or broken runtime library is reported with
its reason, and models of the other backend keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime.backends import availability
from edge_agent.runtime.backends._quant import QTensor, dequantize, quantize
from tests.conftest import ROOT

BROKEN = "raise ImportError('libtensorflowlite.so: cannot open shared object file (simulated)')\n"


def test_both_backends_available_here() -> None:
    assert availability() == {"onnx": None, "litert": None}


def test_broken_litert_is_reported_and_onnx_keeps_working(tmp_path: Path) -> None:
    # Shadow the real packages with ones that fail to import, as a broken install would.
    for pkg in ("ai_edge_litert", "tflite_runtime"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(BROKEN)
    script = (
        "import json\n"
        "from edge_agent.runtime.backends import availability\n"
        "from edge_agent.runtime.engine import Engine\n"
        "from edge_agent.runtime.store import ModelStore\n"
        "from pathlib import Path\n"
        f"e = Engine(ModelStore(Path({str(ROOT / 'models')!r}), Path({str(tmp_path / 's.json')!r})))\n"
        "res = e.load_all()\n"
        "p = e.predict('iris', {'float_input': [[5.1, 3.5, 1.4, 0.2]]})\n"
        "print(json.dumps({'avail': availability(), 'load': res, 'label': p.results[0]['label']}))\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["avail"]["onnx"] is None
    assert "simulated" in doc["avail"]["litert"]
    assert doc["label"] == "setosa"
    litert_models = [n for n, err in doc["load"].items() if err and "backend litert is unavailable" in err]
    assert "face" in litert_models
    assert doc["load"]["iris"] is None


def test_int8_quantization_round_trip_is_within_half_a_step() -> None:
    t = QTensor("x", 0, np.dtype(np.int8), (1, 4), scale=0.05, zero_point=-3)
    x = np.array([[-6.0, -0.01, 0.0, 6.2]], dtype=np.float32)
    q = quantize(x, t)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [[-123, -3, -3, 121]])
    back = dequantize(q, t)
    assert np.all(np.abs(back - x) <= 0.025 + 1e-6)
    # values beyond the representable range saturate instead of wrapping around
    assert quantize(np.array([[100.0, -100.0, 0, 0]], np.float32), t)[0, :2].tolist() == [127, -128]


def _litert_model(name: str, runtime: str | None = None):  # type: ignore[no-untyped-def]
    from edge_agent.runtime.backends import BackendOptions
    from edge_agent.runtime.backends.litert import LiteRTModel
    from edge_agent.runtime.package import read_manifest

    pkg = ROOT / "models" / name / "1"
    m = read_manifest(pkg)
    model = LiteRTModel(pkg / m.file, m, BackendOptions())
    if runtime is not None:  # as with tflite_runtime: the public wrappers
        from edge_agent.runtime.backends import litert

        model._binding, model._set, model._invoke, model._get = litert._calls(model._interp, runtime)
    return model


def test_a_failed_litert_call_leaves_the_interpreter_resizable() -> None:
    from edge_agent.errors import InferenceError

    model = _litert_model("digits_tflite")
    assert model._binding  # ai_edge_litert: the binding's own methods
    kept = []
    try:
        model.infer({"input": np.zeros((3, 1, 8, 8), np.float64)})  # the interpreter refuses float64
    except InferenceError as exc:
        kept.append(exc)  # the exception (and its traceback) stays alive
    assert kept, "float64 was accepted"
    for rows in (5, 1, 32):  # every new batch size resizes the interpreter
        out = model.infer({"input": np.zeros((rows, 1, 8, 8), np.float32)})
        assert out["logits"].shape == (rows, 10)


@pytest.mark.parametrize("name", ["digits_tflite", "digits_tflite_int8"])
def test_public_litert_wrappers_give_the_same_outputs(name: str) -> None:
    x = np.random.default_rng(3).uniform(0, 1, (7, 1, 8, 8)).astype(np.float32)
    direct, public = _litert_model(name), _litert_model(name, runtime="tflite_runtime")
    assert direct._binding and not public._binding
    a, b = direct.infer({"input": x}), public.infer({"input": x})
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
