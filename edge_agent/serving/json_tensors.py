"""JSON bodies whose tensors are decoded in C, with no Python object per element.

``orjson.loads`` makes one Python float per element and ``np.array`` reads them back one by
one: for a 3x32x32 input that is most of a request's decoding. Here simdjson parses the body,
each tensor's numbers go straight into a buffer numpy wraps (``as_buffer``), and only the rest
of the document (names, shapes, parameters) becomes Python objects.

What ``parse`` returns is exactly what ``orjson.loads`` gives, except that each tensor of the
layout is a ``JsonArray`` holding the array that one ``np.array`` call makes of orjson's lists
(int64 when every number is an integer, else float64; the lists' shape). Or it returns None,
and the caller parses the body with orjson as before, so that every refusal keeps its message:
a body this module is not sure about is never decoded here. That covers ragged or mixed
nesting, empty lists, booleans, nulls, strings or objects among the numbers, integers beyond
int64, nesting deeper than the engine accepts, any backslash escape, a body not starting with
``{`` (a byte-order mark, which orjson refuses and simdjson skips), duplicate keys on the way to
a tensor, over ``MAX_KEYS`` keys there, and any array the decoder cannot account for.

Rectangular without a step per element: the lists' shape is read down the first elements
(as ``nested_shape`` does), every array above the innermost rows is checked for its length and
for holding only arrays (one step per row), and the innermost rows for their length. Rows
holding an array instead of a number are caught by counting: the body must contain exactly as
many ``[`` as the arrays visited (one pass over the bytes; a ``[`` inside a string only
sends the body to orjson).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from math import prod
from typing import Any, Final, TypeAlias

import numpy as np
import simdjson

from edge_agent.runtime.inputs import MAX_DEPTH

TENSOR: Final = "tensor"
Layout: TypeAlias = str | dict[str, "Layout"] | list["Layout"]
"""Where a body's tensors are: ``TENSOR``; an object's keys (``"*"``: any key); an array's items."""

V1: Final[Layout] = {"data": TENSOR, "inputs": {"*": TENSOR}}  # /v1 .../predict, the book's /predict
V2: Final[Layout] = {"inputs": [{"data": TENSOR}]}  # /v2 .../infer (JSON)

KEEP_PARSER_BYTES = 256 * 1024
"""Bodies up to this size reuse their thread's parser, whose buffers stay allocated (about 1.5 MB
of RSS once it has read a 224 KiB body); larger ones get a parser of their own, freed with the
request. Only the event loop's thread decodes bodies."""

COUNT_BYTES_MAX = 48 * 1024  # bodies up to this size count their ``[`` with bytes.count
SPARSE_BYTES_PER_BRACKET = 64  # ... unless their ``[`` are sparser than this: bytes.replace
_OPEN = ord("[")
MAX_KEYS = 64  # keys of an object on the way to a tensor (looked up one by one: quadratic)
_UINT_FROM = 2.0**63  # integers from here on are uint64 for numpy (or do not fit it)
_PARSE_ERRORS = (ValueError, TypeError, RuntimeError, LookupError, OSError, MemoryError)
_local = threading.local()


@dataclass(frozen=True, slots=True)
class JsonArray:
    """A rectangular JSON array of numbers decoded in C: ``array`` is ``np.array(lists)``."""

    array: np.ndarray

    def tolist(self) -> Any:
        """The lists orjson would have parsed (int64 -> int, float64 -> float: the same values)."""
        return self.array.tolist()


class _NotHere(Exception):
    """This body goes to orjson."""


def parse(body: bytes, layout: Layout) -> dict[str, Any] | None:
    """``body`` as ``orjson.loads`` parses it, each tensor of ``layout`` a ``JsonArray``; None
    when the body must go to orjson (anything unusual, any error)."""
    if body[:1] != b"{" or b"\\" in body:
        return None
    decoder = _Decoder()
    try:
        doc = decoder.convert(_parse(body), layout)
    except (_NotHere, *_PARSE_ERRORS):
        return None
    if not isinstance(doc, dict) or decoder.arrays != _brackets(body, decoder.arrays):
        return None
    return doc


def _brackets(body: bytes, expected: int) -> int:
    """How many ``[`` the body holds, ``expected`` being how many it should. Sparse brackets (an
    image's rows: one per 600 bytes) are found by ``bytes.replace``, which jumps from one to the
    next with ``memchr`` and copies the rest; dense ones (a column of numbers) by ``bytes.count``,
    a byte loop without a temporary, in a small body and by numpy's vectorised compare in a
    large one. Measured warm / after evicting the caches, in us (``--`` the one not taken):

    ==================  =======  =============  =============  ===========
    body                bytes    count          numpy          replace
    ==================  =======  =============  =============  ===========
    heavy CNN 3x32x32   60,511   17.8 / 31.0    --             3.3 / 21.8
    face 3x128x128      965,455  --             67.3 / 208.5   44.8 / 162.0
    iris 1x4            28       0.1 / 6.6      --             0.1 / 7.5
    column 4000x1       16,010   5.1 / 12.2     --             43.6 / 59.7
    ==================  =======  =============  =============  ===========
    """
    if expected * SPARSE_BYTES_PER_BRACKET < len(body):
        return len(body) - len(body.replace(b"[", b""))
    if len(body) <= COUNT_BYTES_MAX:
        return body.count(b"[")
    return int(np.count_nonzero(np.frombuffer(body, np.uint8) == _OPEN))


def _parse(body: bytes) -> Any:
    if len(body) > KEEP_PARSER_BYTES:
        return simdjson.Parser().parse(body)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser(KEEP_PARSER_BYTES)
    try:
        return parser.parse(body)
    except RuntimeError as exc:
        if "re-use a parser" not in str(exc):
            raise
    parser = _local.parser = simdjson.Parser(KEEP_PARSER_BYTES)  # a proxy of the last body lives on
    return parser.parse(body)


class _Decoder:
    """One body's conversion; ``arrays`` counts every array it has accounted for."""

    __slots__ = ("arrays",)

    def __init__(self) -> None:
        self.arrays = 0

    def convert(self, node: Any, layout: Layout | None) -> Any:
        if layout is TENSOR:
            if type(node) is simdjson.Array:
                return JsonArray(self.tensor(node))
            return self.plain(node)
        if isinstance(layout, dict) and type(node) is simdjson.Object:
            if len(node) > MAX_KEYS:
                raise _NotHere
            keys = list(node)
            if len(set(keys)) != len(keys):
                raise _NotHere  # orjson keeps the last value, simdjson's lookup finds the first
            other = layout.get("*")
            return {key: self.convert(node[key], layout.get(key, other)) for key in keys}
        if isinstance(layout, list) and type(node) is simdjson.Array:
            self.arrays += 1
            return [self.convert(item, layout[0]) for item in node]
        return self.plain(node)

    def plain(self, node: Any) -> Any:
        """A part without tensors, converted in C (as orjson would: the last of duplicate keys)."""
        if type(node) is simdjson.Object:
            value: Any = node.as_dict()
        elif type(node) is simdjson.Array:
            value = node.as_list()
        else:
            return node
        self.arrays += _lists(value)
        return value

    def tensor(self, node: Any) -> np.ndarray:
        shape: list[int] = []
        first = node
        while type(first) is simdjson.Array:
            n = len(first)
            if not n or len(shape) == MAX_DEPTH:
                raise _NotHere  # empty, or too deep: the engine's own message
            shape.append(n)
            first = first[0]
        if type(first) is float:
            kinds: tuple[str, ...] = ("d",)
        elif type(first) is int:
            kinds = ("i", "d")  # int64 when every number is an integer
        else:
            raise _NotHere  # a boolean, null, string or object
        self.arrays += _rows(node, shape)
        for kind in kinds:
            try:
                buf = node.as_buffer(of_type=kind)
            except (TypeError, ValueError):
                continue
            arr = np.frombuffer(buf, np.int64 if kind == "i" else np.float64)
            if arr.size != prod(shape):
                raise _NotHere
            if kind == "d" and len(kinds) == 2 and arr.max() >= _UINT_FROM:
                raise _NotHere  # maybe integers only, some over int64: numpy makes uint64 of them
            return arr.reshape(shape)
        raise _NotHere  # a boolean, null, string or object further on


def _rows(node: Any, shape: list[int]) -> int:
    """How many arrays ``node`` is made of, checking that every array of each level has that
    level's length and that, above the innermost rows, they hold only arrays. One step per array."""
    level = [node]
    count = 1
    array = simdjson.Array
    for n in shape[1:-1]:
        below = []
        for parent in level:
            for child in parent:
                if type(child) is not array or len(child) != n:
                    raise _NotHere
                below.append(child)
        count += len(below)
        level = below
    if len(shape) > 1:  # the innermost rows: checked, not kept
        n = shape[-1]
        for parent in level:
            for child in parent:
                if type(child) is not array or len(child) != n:
                    raise _NotHere
            count += len(parent)
    return count


def _lists(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_lists(v) for v in value if isinstance(v, list | dict))
    if isinstance(value, dict):
        return sum(_lists(v) for v in value.values() if isinstance(v, list | dict))
    return 0
