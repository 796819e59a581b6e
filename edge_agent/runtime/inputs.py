"""Check caller tensors against the manifest before they reach a runtime.

Nothing here works element by element in Python. Nested lists (JSON bodies)
are measured from their structure (the first element at each level: depth and
row counts), checked against the model, and converted to an array in one
numpy call; ragged rows, strings, nulls and objects are refused from the
array numpy builds. Arrays are then checked with a few vectorised calls.

The checks for each model are prepared once (``InputCheck``): a request whose
arrays already have the manifest's dtypes and shapes costs a few dictionary
and tuple comparisons plus one finiteness pass over float data (``nonfinite``:
for float32 arrays of up to 8192 values, one dot product with zeros).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import Manifest, TensorSpec

DEFAULT_MAX_ROWS = 1024
MAX_DEPTH = 32  # numpy allows 64 dimensions; no model here takes more than 5

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
_DTYPES = {name: np.dtype(name) for name in _SAFE_CASTS}
NUMERIC_KINDS = frozenset("biuf")

# The dot product with zeros (``nonfinite``) is one BLAS pass; OpenBLAS starts threads for dot
# products of more than 10,000 values, and larger inputs belong to models whose run dwarfs the test.
DOT_MAX = 8192
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_ZEROS = np.zeros(DOT_MAX, _F32)
_ZEROS.flags.writeable = False
_ZERO_VIEWS: dict[int, np.ndarray] = {}  # size -> _ZEROS[:size]


def nonfinite(flat: np.ndarray) -> bool:
    """Whether a 1-d float array holds NaN or an infinity.

    float32, up to ``DOT_MAX`` values: ``vdot(flat, zeros)``. Every product is 0 * x, which is
    +-0 for a finite x and NaN for an infinity or a NaN; a sum of zeros is +-0 and a sum with
    a NaN is NaN. So the result is NaN (true) exactly when a value is not finite, else +-0
    (false): half the time of ``isfinite(flat).all()``, which longer arrays and float16 take.
    (``vdot``, not ``dot``: the same BLAS call, without the "invalid value" warning ``dot``
    gives for 0 * inf.)"""
    size = flat.size
    if flat.dtype is _F32 and size <= DOT_MAX:
        zeros = _ZERO_VIEWS.get(size)
        if zeros is None:
            zeros = _ZERO_VIEWS[size] = _ZEROS[:size]
        return bool(np.vdot(flat, zeros))
    return not np.isfinite(flat).all()


# -- nested lists -> arrays ---------------------------------------------------------------
def nested_shape(data: Any, name: str) -> list[int]:
    """The shape nested lists claim, read down the first element of each level.

    Costs one step per dimension, not per element; a ragged list is caught by the
    conversion (``from_nested``)."""
    shape: list[int] = []
    while isinstance(data, list):
        if len(shape) == MAX_DEPTH:
            raise InvalidInput(
                f"input {name!r} nests lists more than {MAX_DEPTH} levels deep; send a flat or "
                "row-major nested array of the model's shape",
                input=name,
            )
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return shape


def from_nested(name: str, data: Any, shape: list[int] | None = None) -> np.ndarray:
    """Nested lists of numbers -> an array, in one numpy conversion (dtype from the data).

    ``shape`` is ``nested_shape(data)`` when the caller already has it."""
    if shape is None:
        shape = nested_shape(data, name)
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(
            f"input {name!r} is not a rectangular array: its rows differ in length or nesting",
            input=name,
        ) from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(
            f"input {name!r} must be a rectangular array of numbers (rows of equal length); "
            "it holds strings, nulls, objects or numbers too large for 64 bits",
            input=name,
        )
    if arr.ndim != len(shape):  # numbers and lists mixed at one level
        raise InvalidInput(f"input {name!r} is not a rectangular array: rows differ in nesting", input=name)
    return arr


def _as_array(spec: TensorSpec, value: Any, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list):  # depth and row count are refused before converting
        shape = nested_shape(value, spec.name)
        if len(shape) not in (len(spec.shape), len(spec.shape) - 1):
            raise _shape_error(spec, shape)
        if len(shape) == len(spec.shape) and shape[0] > max_rows:
            raise InvalidInput(f"batch of {shape[0]} rows is over the limit of {max_rows}; split it")
        return from_nested(spec.name, value, shape)
    try:  # a scalar, a tuple, a numpy scalar: what numpy makes of it
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {spec.name!r} is not a rectangular array", input=spec.name) from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(
            f"input {spec.name!r} must be a rectangular array of numbers (rows of equal length)",
            input=spec.name,
        )
    return arr


# -- the checks ---------------------------------------------------------------------------
def _fmt(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _shape_error(spec: TensorSpec, got: list[int], axis: int | None = None) -> InvalidInput:
    where = "" if axis is None else f" (dimension {axis} must be {spec.shape[axis]})"
    return InvalidInput(
        f"input {spec.name!r} has shape {got}, expected {_fmt(spec.shape)}{where}",
        input=spec.name,
        expected=spec.shape,
        got=got,
    )


def _check_one(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """The full check: any dtype that casts safely, a missing batch dimension, range checks."""
    want_ndim = len(spec.shape)
    if arr.ndim == want_ndim - 1:  # one sample without its batch dimension
        arr = arr[None, ...]
    if arr.ndim != want_ndim:
        raise _shape_error(spec, list(arr.shape))
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if want is not None and got != want and not (axis == 0 and want == 1):
            raise _shape_error(spec, list(arr.shape), axis)
    target = _DTYPES[spec.dtype]
    finite = False  # known to hold no NaN or infinity
    if arr.dtype != target:  # (dtype.name is slow: compare dtype objects)
        if arr.dtype.kind not in _SAFE_CASTS[spec.dtype]:
            raise InvalidInput(
                f"input {spec.name!r} has dtype {arr.dtype.name}, expected {spec.dtype}",
                input=spec.name,
                expected=spec.dtype,
                got=arr.dtype.name,
            )
        if arr.dtype.kind == "f" and target.kind == "f" and arr.dtype.itemsize > target.itemsize:
            with np.errstate(over="ignore"):
                cast = arr.astype(target, order="C")
            if nonfinite(cast.ravel()):  # the narrow type overflowed, or the source was not finite
                overflow = np.isinf(cast) & np.isfinite(arr)
                if overflow.any():
                    raise InvalidInput(
                        f"input {spec.name!r} has values out of {spec.dtype} range", input=spec.name
                    )
            else:
                finite = True
            arr = cast
        else:
            arr = arr.astype(target)
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind == "f" and not spec.allow_nan and not finite and nonfinite(arr.ravel()):
        raise InvalidInput(
            f"input {spec.name!r} contains NaN or infinity, which this model does not accept", input=spec.name
        )
    return arr


class InputCheck:
    """The checks of one manifest, prepared once: names, dtypes, shapes as tuples."""

    __slots__ = ("_fast", "_one", "manifest", "max_rows", "names")

    def __init__(self, manifest: Manifest, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.manifest = manifest
        self.max_rows = max_rows
        self.names = frozenset(t.name for t in manifest.inputs)
        # (name, spec, dtype, ndim, tail of fixed dims or None when a later dim is dynamic, finite?,
        #  the fixed batch size or None when any batch size goes)
        self._fast = [
            (
                t.name,
                t,
                _DTYPES[t.dtype],
                len(t.shape),
                None if any(d is None for d in t.shape[1:]) else tuple(t.shape[1:]),
                _DTYPES[t.dtype].kind == "f" and not t.allow_nan,
                None if not t.shape or t.shape[0] is None or t.shape[0] == 1 else t.shape[0],
            )
            for t in manifest.inputs
        ]
        # a single input of fixed trailing dims: (name, dtype, ndim, tail, finite?, fixed batch)
        self._one = None
        if len(self._fast) == 1 and self._fast[0][4] is not None:
            name, _, dtype, ndim, tail, finite, batch = self._fast[0]
            self._one = (name, dtype, ndim, tail, finite, batch)

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Named inputs -> contiguous arrays of the manifest's dtypes, all with one batch size.

        One input that already is what the model takes is passed through after the checks below;
        anything else goes through ``_check_all``, which also names what is wrong."""
        one = self._one
        if one is not None and len(inputs) == 1:
            name, dtype, ndim, tail, finite, batch = one
            arr = inputs.get(name)
            if (
                type(arr) is np.ndarray
                and arr.dtype is dtype
                and arr.ndim == ndim
                and arr.shape[1:] == tail
                and arr.flags.c_contiguous
                and 0 < arr.shape[0] <= self.max_rows
                and (batch is None or arr.shape[0] == batch)
                and not (finite and nonfinite(arr.ravel()))  # (ravel: a view, contiguous)
            ):
                return {name: arr}
            if (  # JSON numbers (float64) for a float32 model that takes no NaN: cast and check once
                type(arr) is np.ndarray
                and arr.dtype is _F64
                and dtype is _F32
                and finite
                and arr.ndim == ndim
                and arr.shape[1:] == tail
                and 0 < arr.shape[0] <= self.max_rows
                and (batch is None or arr.shape[0] == batch)
            ):
                with np.errstate(over="ignore"):
                    cast = arr.astype(_F32, order="C")
                if not nonfinite(cast.ravel()):
                    return {name: cast}
                # out of float32's range, NaN or infinity: the full check below names which
        return self._check_all(inputs)

    def _check_all(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if len(inputs) != len(self._fast) or not self.names.issuperset(inputs):
            self._names_error(inputs)
        out: dict[str, np.ndarray] = {}
        n = -1
        for name, spec, dtype, ndim, tail, finite, batch in self._fast:
            arr = inputs[name]
            if (
                type(arr) is np.ndarray
                and arr.dtype is dtype
                and arr.ndim == ndim
                and tail is not None
                and arr.shape[1:] == tail
                and arr.flags.c_contiguous
                and (batch is None or arr.shape[0] == batch)
            ):
                if finite and nonfinite(arr.ravel()):  # (ravel: a view, contiguous)
                    arr = _check_one(spec, arr)  # raises the NaN / infinity error
            else:
                arr = _check_one(spec, _as_array(spec, arr, self.max_rows))
            rows = arr.shape[0]
            if n != rows:
                if n != -1:
                    self._batch_error(out, name, arr)
                n = rows
            out[name] = arr
        if n == 0:
            raise InvalidInput("empty batch: send at least one row")
        if n > self.max_rows:
            raise InvalidInput(f"batch of {n} rows is over the limit of {self.max_rows}; split it")
        return out

    def _names_error(self, inputs: Mapping[str, Any]) -> NoReturn:
        unknown = sorted(set(inputs) - self.names)
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; {self.manifest.name} takes {sorted(self.names)}")
        for spec in self.manifest.inputs:
            if spec.name not in inputs:
                raise InvalidInput(
                    f"missing input {spec.name!r} of shape {_fmt(spec.shape)}", input=spec.name
                )
        raise AssertionError("unreachable: the names differ")

    @staticmethod
    def _batch_error(out: Mapping[str, np.ndarray], name: str, arr: np.ndarray) -> NoReturn:
        batch = sorted({a.shape[0] for a in out.values()} | {arr.shape[0]})
        raise InvalidInput(f"inputs disagree on the batch size: {batch}")


_CHECKS: dict[tuple[int, int], tuple[Manifest, InputCheck]] = {}


def input_check(manifest: Manifest, max_rows: int = DEFAULT_MAX_ROWS) -> InputCheck:
    """The prepared checks of ``manifest`` (kept while that manifest object lives here)."""
    key = (id(manifest), max_rows)
    held = _CHECKS.get(key)
    if held is None or held[0] is not manifest:
        if len(_CHECKS) >= 256:
            _CHECKS.clear()
        held = (manifest, InputCheck(manifest, max_rows))
        _CHECKS[key] = held
    return held[1]


def validate(
    manifest: Manifest, inputs: Mapping[str, Any], max_rows: int = DEFAULT_MAX_ROWS
) -> dict[str, np.ndarray]:
    """Named inputs -> contiguous arrays of the manifest's dtypes, all with one batch size."""
    return input_check(manifest, max_rows)(inputs)
