"""ONNX Runtime backend (CPU execution provider).

Handles plain tensor outputs and skl2onnx's ZipMap output (a sequence of
``{class: probability}`` maps, one per row), which callers receive as a float32
``[N, classes]`` tensor with the classes in key order: the ZipMap node is taken
off the graph at load (``_zipmap``) so onnxruntime returns that tensor itself;
when it cannot be, the maps are converted after each call.

Per call the model does one ``run`` with output names prepared at load, on the
session's own binding (``_sess.run``, what the public ``run`` calls after
re-checking the input names, which the engine's validation already did).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import BackendUnavailable, InferenceError, PackageError
from edge_agent.runtime.backends._zipmap import without_zipmap
from edge_agent.runtime.backends.base import BackendOptions
from edge_agent.runtime.package import Manifest

logger = logging.getLogger(__name__)


TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def load_ort() -> Any:
    """The ``onnxruntime`` module, imported with its telemetry off.

    From 1.29 ONNX Runtime sends usage telemetry on Linux too, unless ``ORT_DISABLE_TELEMETRY=1``
    is set before its first import: a persistent device id and an SQLite event cache written under
    ``$XDG_CACHE_HOME`` or ``~/.cache`` (``Microsoft/DeveloperTools/.onnxruntime``) from the
    import on, and DNS look-ups and uploads to ``mobile.events.data.microsoft.com`` from a thread
    of its own. On a device that is SD-card wear, traffic on a metered link and data leaving the
    fleet: off, unless the environment says otherwise (``ORT_DISABLE_TELEMETRY=0``). Every import
    of ``onnxruntime`` in the agent goes through here."""
    os.environ.setdefault(TELEMETRY_ENV, "1")
    try:
        return importlib.import_module("onnxruntime")
    except Exception as exc:  # ImportError, or a broken shared library (OSError)
        raise BackendUnavailable(f"onnxruntime cannot be imported: {exc}") from None


def _maps_to_array(seq: Any) -> np.ndarray:
    """ZipMap rows -> ``[N, classes]`` float32, classes in key order, the values read in C."""
    if not seq:
        return np.zeros((0, 0), dtype=np.float32)
    first = seq[0]
    keys = list(first)
    if keys != sorted(keys):
        return np.array([[row[k] for k in sorted(keys)] for row in seq], dtype=np.float32)
    flat = np.fromiter(chain.from_iterable(map(dict.values, seq)), np.float32, len(seq) * len(keys))
    return flat.reshape(len(seq), len(keys))


class OnnxModel:
    def __init__(self, path: Path, manifest: Manifest, options: BackendOptions) -> None:
        ort = load_ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._out_names = [t.name for t in manifest.outputs]
        maps = {t.name for t in manifest.outputs if t.kind == "sequence_of_maps"}
        source: str | bytes = str(path)
        fetch: dict[str, str] = {}
        try:
            stripped = without_zipmap(path.read_bytes(), maps) if maps else None
            if stripped is not None:
                source, fetch = stripped
            self._session = ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PackageError(
                f"{manifest.name}/{manifest.version}: onnxruntime cannot load {path.name}: {exc}"
            ) from None
        self.manifest = manifest
        have_in = {i.name for i in self._session.get_inputs()}
        have_out = {o.name for o in self._session.get_outputs()}
        have_out |= set(fetch)
        missing = [t.name for t in manifest.inputs if t.name not in have_in]
        missing += [t.name for t in manifest.outputs if t.name not in have_out]
        if missing:
            raise PackageError(
                f"{manifest.name}/{manifest.version}: "
                f"manifest names tensors the model does not have: {missing}"
            )
        self._zipmap_removed = fetch
        self._fetch = [fetch.get(name, name) for name in self._out_names]  # what the session returns
        self._maps = maps - set(fetch)  # ZipMap outputs still converted after the call
        first = manifest.inputs[0].shape
        self._max_batch = None if not first or first[0] is None else first[0]
        run = getattr(getattr(self._session, "_sess", None), "run", None)
        self._run: Any = run if callable(run) else None
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = inputs if type(inputs) is dict else dict(inputs)
        try:
            if self._run is not None:
                raw = self._run(self._fetch, feeds, None)
            else:  # an onnxruntime without the binding attribute: the public call
                raw = self._session.run(self._fetch, feeds)
        except Exception as exc:
            raise InferenceError(f"{self.manifest.name}: onnxruntime failed: {exc}") from None
        if not self._maps:
            return dict(zip(self._out_names, raw, strict=True))
        out: dict[str, np.ndarray] = {}
        for name, value in zip(self._out_names, raw, strict=True):
            out[name] = _maps_to_array(value) if name in self._maps else value
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "zipmap_removed": dict(self._zipmap_removed),
            "providers": self._session.get_providers(),
            "inputs": [
                {"name": i.name, "type": i.type, "shape": i.shape} for i in self._session.get_inputs()
            ],
            "outputs": [
                {"name": o.name, "type": o.type, "shape": o.shape} for o in self._session.get_outputs()
            ],
        }

    def close(self) -> None:
        # Only marks the model not ready: a call still running on another thread
        # keeps its session; the memory goes when the last reference does.
        self._ready = False


class OnnxBackend:
    name = "onnx"

    def unavailable_reason(self) -> str | None:
        try:
            ort = load_ort()
        except BackendUnavailable as exc:
            return exc.message
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CPUExecutionProvider"
        return None

    def version(self) -> str:
        return str(load_ort().__version__)

    def load(self, path: Path, manifest: Manifest, options: BackendOptions) -> OnnxModel:
        return OnnxModel(path, manifest, options)


BACKEND = OnnxBackend()
