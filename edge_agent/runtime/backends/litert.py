"""LiteRT (TensorFlow Lite) backend via ``ai_edge_litert``.

Falls back to ``tflite_runtime`` only when that is what is installed. Int8 /
uint8 quantized inputs and outputs are handled transparently: callers send and
receive float32, quantized with the model's own scale and zero point. Models
whose batch dimension is dynamic are resized to the batch; fixed-batch models
are run one slice at a time. The interpreter is not thread-safe, so each model
serialises its calls with a lock (held from the first ``set_tensor`` to the last
``get_tensor``, which copies the output out of the interpreter's buffer).

Everything a call needs is prepared at load: which inputs need quantizing or a
cast, and for quantized tensors the per-call forms of ``_quant``'s definitions
(a ``Quantizer`` with its buffers per input; a 256-entry table per one-byte
output, one ``take``). ``set_tensor`` copies the quantizer's buffer into the
interpreter. With ``ai_edge_litert`` the three calls go to the binding object's
methods (``SetTensor``, ``Invoke``, ``GetTensor``: what the public wrappers call;
``invoke`` first checks that no ``tensor()`` view is held, and this backend
never takes one), ~0.4 us less per call. The binding object is looked up per
call and let go before returning, even on an exception: LiteRT refuses to
resize while anything else holds it.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import BackendUnavailable, InferenceError, PackageError
from edge_agent.runtime.backends._quant import QTensor, Quantizer, dequantize, dequantize_table
from edge_agent.runtime.backends.base import BackendOptions
from edge_agent.runtime.package import Manifest


def _interpreter_class() -> tuple[Any, str]:
    errors = []
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(module).Interpreter, module.split(".")[0]
        except Exception as exc:  # ImportError, or a broken shared library
            errors.append(f"{module}: {exc}")
    raise BackendUnavailable("no LiteRT runtime can be imported (" + "; ".join(errors) + ")")


def _calls(interp: Any, runtime: str) -> tuple[bool, Any, Any, Any]:
    """(binding?, set_tensor, invoke, get_tensor): unbound, each called with its object first."""
    names = ("SetTensor", "Invoke", "GetTensor")
    binding: Any = type(getattr(interp, "_interpreter", None))
    if runtime == "ai_edge_litert" and all(callable(getattr(binding, n, None)) for n in names):
        return True, binding.SetTensor, binding.Invoke, binding.GetTensor
    public: Any = type(interp)
    return False, public.set_tensor, public.invoke, public.get_tensor


def _is_quantized(dtype: Any, scale: float) -> bool:
    return scale != 0.0 and bool(np.issubdtype(dtype, np.integer))


def _tensor(detail: dict[str, Any]) -> QTensor:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    return QTensor(
        name=detail["name"],
        index=int(detail["index"]),
        dtype=dtype,
        shape=tuple(int(d) for d in detail["shape_signature"]),
        scale=float(scale),
        zero_point=int(zero_point),
        quantized=_is_quantized(dtype, float(scale)),
    )


class LiteRTModel:
    def __init__(self, path: Path, manifest: Manifest, options: BackendOptions) -> None:
        interpreter_cls, self._runtime = _interpreter_class()
        try:
            self._interp = interpreter_cls(model_path=str(path), num_threads=options.intra_op_threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise PackageError(
                f"{manifest.name}/{manifest.version}: LiteRT cannot load {path.name}: {exc}"
            ) from None
        self.manifest = manifest
        ins = {d["name"]: _tensor(d) for d in self._interp.get_input_details()}
        outs = {d["name"]: _tensor(d) for d in self._interp.get_output_details()}
        missing = [t.name for t in manifest.inputs if t.name not in ins]
        missing += [t.name for t in manifest.outputs if t.name not in outs]
        if missing:
            raise PackageError(
                f"{manifest.name}/{manifest.version}: manifest names tensors the model does not have: "
                f"{missing}; the model has inputs {sorted(ins)} and outputs {sorted(outs)}"
            )
        self._inputs = [ins[t.name] for t in manifest.inputs]
        self._outputs = [outs[t.name] for t in manifest.outputs]
        self._dynamic = all(t.shape and t.shape[0] == -1 for t in self._inputs)
        self._fixed_batch = max(1, self._inputs[0].shape[0]) if self._inputs[0].shape else 1
        self._current_batch = -1
        self._lock = threading.Lock()
        self._binding, self._set, self._invoke, self._get = _calls(self._interp, self._runtime)
        self._first = manifest.inputs[0].name
        # per call: (name, index, quantizer when quantized, dtype when the caller's needs a cast)
        dtypes = {t.name: np.dtype(t.dtype) for t in manifest.inputs}
        self._feed = [
            (
                t.name,
                t.index,
                Quantizer(t) if t.quantized else None,
                None if t.quantized or dtypes[t.name] == t.dtype else t.dtype,
            )
            for t in self._inputs
        ]
        # (manifest name, index, 256-entry table, tensor for a wider quantized type)
        self._fetch = [
            (name, t.index, table, t if t.quantized and table is None else None)
            for name, t, table in ((t.name, t, dequantize_table(t)) for t in self._outputs)
        ]
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def max_batch(self) -> int | None:
        return None if self._dynamic else self._fixed_batch

    def _run(self, inputs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        interp = self._interp
        if self._dynamic and n != self._current_batch:
            for t in self._inputs:
                interp.resize_tensor_input(t.index, [n, *t.shape[1:]], strict=False)
            interp.allocate_tensors()
            self._current_batch = n
        target = interp._interpreter if self._binding else interp
        try:
            set_tensor = self._set
            for name, index, quantizer, cast in self._feed:
                x = inputs[name]
                if quantizer is not None:
                    x = quantizer(x)
                elif cast is not None:
                    x = x.astype(cast)
                set_tensor(target, index, x)  # copies x into the interpreter
            self._invoke(target)
            get = self._get
            out = {}
            for name, index, table, wide in self._fetch:
                y = get(target, index)  # a copy: the buffer is the interpreter's
                if table is not None:
                    y = table.take(y)
                elif wide is not None:
                    y = dequantize(y, wide)
                out[name] = y
            return out
        finally:
            del target  # (a traceback keeps this frame: it must not keep the binding object)

    def _run_fixed(self, inputs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """A fixed-batch model: one run per slice of the batch, the last one padded."""
        b = self._fixed_batch
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, b):
            chunk = {k: v[start : start + b] for k, v in inputs.items()}
            rows = next(iter(chunk.values())).shape[0]
            if rows < b:  # pad the last slice up to the fixed batch
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - rows, 0)]) for k, v in chunk.items()}
            parts.append({k: o[:rows] for k, o in self._run(chunk, b).items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs[self._first])  # validated: every input has the batch dimension
        try:
            with self._lock:
                return self._run(inputs, n) if self._dynamic else self._run_fixed(inputs, n)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"{self.manifest.name}: LiteRT failed: {exc}") from None

    def metadata(self) -> dict[str, Any]:
        def describe(t: QTensor) -> dict[str, Any]:
            d: dict[str, Any] = {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)}
            if t.quantized:
                d["quantization"] = {"scale": t.scale, "zero_point": t.zero_point}
            return d

        return {
            "runtime": self._runtime,
            "dynamic_batch": self._dynamic,
            "inputs": [describe(t) for t in self._inputs],
            "outputs": [describe(t) for t in self._outputs],
        }

    def close(self) -> None:
        self._ready = False


class LiteRTBackend:
    name = "litert"

    def unavailable_reason(self) -> str | None:
        try:
            _interpreter_class()
        except BackendUnavailable as exc:
            return exc.message
        return None

    def version(self) -> str:
        _, module = _interpreter_class()
        mod = importlib.import_module(module)
        return f"{module} {getattr(mod, '__version__', 'unknown')}"

    def load(self, path: Path, manifest: Manifest, options: BackendOptions) -> LiteRTModel:
        return LiteRTModel(path, manifest, options)


BACKEND = LiteRTBackend()
