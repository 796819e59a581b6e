"""Check caller tensors against the manifest before they reach a runtime.

Everything here is vectorised: a 32 x 4096 float batch is checked with a few
numpy calls, never element by element in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import Manifest, TensorSpec

DEFAULT_MAX_ROWS = 1024

_SAFE_CASTS: dict[str, tuple[str, ...]] = {
    # target dtype -> kinds of source dtype accepted (f float, i int, u uint, b bool)
    "float32": ("f", "i", "u", "b"),
    "float16": ("f", "i", "u", "b"),
    "int64": ("i", "u", "b"),
    "int32": ("i", "u", "b"),
    "int8": ("i", "u", "b"),
    "uint8": ("i", "u", "b"),
    "bool": ("b",),
}


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {name!r} is not a rectangular array: {exc}", input=name) from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InvalidInput(
            f"input {name!r} must be a rectangular array of numbers (rows of equal length)", input=name
        )
    return arr


_DTYPES = {name: np.dtype(name) for name in _SAFE_CASTS}


def _check_one(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    want_ndim = len(spec.shape)
    if arr.ndim == want_ndim - 1:  # one sample without its batch dimension
        arr = arr[None, ...]
    if arr.ndim != want_ndim:
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(arr.shape)}, expected {_fmt(spec.shape)}",
            input=spec.name,
            expected=spec.shape,
            got=list(arr.shape),
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if want is not None and got != want and not (axis == 0 and want == 1):
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(arr.shape)}, expected {_fmt(spec.shape)} "
                f"(dimension {axis} must be {want})",
                input=spec.name,
                expected=spec.shape,
                got=list(arr.shape),
            )
    if arr.dtype != _DTYPES[spec.dtype]:  # (dtype.name is slow: compare dtype objects)
        if arr.dtype.kind not in _SAFE_CASTS[spec.dtype]:
            raise InvalidInput(
                f"input {spec.name!r} has dtype {arr.dtype.name}, expected {spec.dtype}",
                input=spec.name,
                expected=spec.dtype,
                got=arr.dtype.name,
            )
        if arr.dtype.kind == "f" and spec.dtype in ("float32", "float16"):
            info = np.finfo(spec.dtype)
            finite = arr[np.isfinite(arr)]
            if finite.size and (finite.max() > info.max or finite.min() < info.min):
                raise InvalidInput(
                    f"input {spec.name!r} has values out of {spec.dtype} range", input=spec.name
                )
        arr = arr.astype(spec.dtype)
    if arr.dtype.kind == "f" and not spec.allow_nan and not np.isfinite(arr).all():
        raise InvalidInput(
            f"input {spec.name!r} contains NaN or infinity, which this model does not accept", input=spec.name
        )
    return np.ascontiguousarray(arr)


def _fmt(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def validate(
    manifest: Manifest, inputs: Mapping[str, Any], max_rows: int = DEFAULT_MAX_ROWS
) -> dict[str, np.ndarray]:
    """Named inputs -> contiguous arrays of the manifest's dtypes, all with one batch size."""
    names = {t.name for t in manifest.inputs}
    unknown = sorted(set(inputs) - names)
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; {manifest.name} takes {sorted(names)}")
    out: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        if spec.name not in inputs:
            raise InvalidInput(f"missing input {spec.name!r} of shape {_fmt(spec.shape)}", input=spec.name)
        out[spec.name] = _check_one(spec, _as_array(spec.name, inputs[spec.name]))
    batch = {a.shape[0] for a in out.values()}
    if len(batch) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch)}")
    (n,) = batch
    if n == 0:
        raise InvalidInput("empty batch: send at least one row")
    if n > max_rows:
        raise InvalidInput(f"batch of {n} rows is over the limit of {max_rows}; split it")
    return out
