"""The compact binary tensor format of the prep and model@NAME services.

One message carries named tensors and a small JSON ``meta`` object, in one body,
with no JSON lists of floats and no pickle. Both ends import this module: it is
the one definition of the format.

::

    offset   size  content
    0        4     magic b"ETW1"
    4        4     H, the header length: uint32, little-endian
    8        H     header: UTF-8 JSON {"meta": {...},
                   "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    8+H      pad   zero bytes up to the next multiple of 8: the data start D
    D        ...   tensor data: raw little-endian C-order bytes; tensor i starts at
                   D + offset_i (a multiple of 8, so decoded arrays are aligned)

``dtype`` is a numpy name from ``DTYPES`` (always little-endian on the wire).
Decoding makes zero-copy, read-only numpy views over the body and checks every
field first (magic, sizes, dtypes, shapes, bounds), so a malformed message is an
``InvalidInput`` (422), never a crash or a huge allocation.
Media type: ``application/x-edge-tensors``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import orjson

from edge_agent.errors import InvalidInput

MEDIA_TYPE = "application/x-edge-tensors"
MAGIC = b"ETW1"
ALIGN = 8
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 256
MAX_NDIM = 16
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
_PREFIX = struct.Struct("<4sI")


class TensorWireError(InvalidInput):
    """A body that is not a valid tensor message."""

    code = "invalid_tensor_message"


@dataclass(frozen=True, slots=True)
class Message:
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def _pad(n: int) -> int:
    return -n % ALIGN


def encode(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Tensors (+ JSON-serialisable meta) -> one message; copies each tensor once."""
    if len(tensors) > MAX_TENSORS:
        raise TensorWireError(f"{len(tensors)} tensors is over the limit of {MAX_TENSORS}")
    entries: list[dict[str, Any]] = []
    chunks: list[Any] = []
    offset = 0
    for name, value in tensors.items():
        arr = np.asarray(value)
        wire = DTYPES.get(arr.dtype.name)
        if wire is None:
            raise TensorWireError(f"tensor {name!r} has dtype {arr.dtype.name}, not one of {sorted(DTYPES)}")
        arr = np.asarray(arr, dtype=wire, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        pad = _pad(offset)
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        entries.append(
            {
                "name": name,
                "dtype": arr.dtype.name,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": arr.nbytes,
            }
        )
        chunks.append(arr.reshape(-1).view(np.uint8))
        offset += arr.nbytes
    header = orjson.dumps({"meta": dict(meta or {}), "tensors": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(header) > MAX_HEADER_BYTES:
        raise TensorWireError(f"header of {len(header)} bytes is over the limit of {MAX_HEADER_BYTES}")
    prefix = _PREFIX.pack(MAGIC, len(header))
    return b"".join([prefix, header, b"\0" * _pad(len(prefix) + len(header)), *chunks])


def decode(data: bytes) -> Message:
    """One message -> read-only views of its tensors and its meta; TensorWireError if malformed."""
    if len(data) < _PREFIX.size:
        raise TensorWireError(f"tensor message of {len(data)} bytes is shorter than its 8-byte prefix")
    magic, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise TensorWireError(
            f"not a tensor message (magic {magic!r}, expected {MAGIC!r}); send {MEDIA_TYPE}"
        )
    if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise TensorWireError(f"tensor message header length {hlen} is out of bounds ({len(data)} bytes)")
    try:
        header = orjson.loads(data[_PREFIX.size : _PREFIX.size + hlen])
    except orjson.JSONDecodeError as exc:
        raise TensorWireError(f"tensor message header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise TensorWireError('tensor message header must be an object with a "tensors" list')
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise TensorWireError('tensor message "meta" must be an object')
    if len(header["tensors"]) > MAX_TENSORS:
        raise TensorWireError(f"{len(header['tensors'])} tensors is over the limit of {MAX_TENSORS}")
    start = _PREFIX.size + hlen
    start += _pad(start)
    tensors = {}
    for i, entry in enumerate(header["tensors"]):
        name, arr = _tensor(data, start, i, entry)
        if name in tensors:
            raise TensorWireError(f"tensor {name!r} appears twice")
        tensors[name] = arr
    return Message(tensors, meta)


def _tensor(data: bytes, start: int, i: int, entry: Any) -> tuple[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise TensorWireError(f"tensor entry {i} must be an object")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    if not isinstance(name, str) or not name:
        raise TensorWireError(f"tensor entry {i} needs a non-empty string name")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise TensorWireError(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise TensorWireError(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} sizes >= 0")
    wire = DTYPES[dtype]
    count = prod(shape)
    if not isinstance(offset, int) or offset < 0 or offset % ALIGN or nbytes != count * wire.itemsize:
        raise TensorWireError(
            f"tensor {name!r}: offset {offset!r} / nbytes {nbytes!r} do not fit {dtype}{shape}"
        )
    if start + offset + nbytes > len(data):
        raise TensorWireError(f"tensor {name!r}: data runs past the end of the message (truncated?)")
    arr = np.frombuffer(data, dtype=wire, count=count, offset=start + offset)
    return name, arr.reshape(shape)
