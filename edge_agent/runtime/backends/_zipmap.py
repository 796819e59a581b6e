"""Take skl2onnx's ZipMap off an ONNX model, so onnxruntime returns the probability tensor itself.

A ZipMap node turns a ``[N, classes]`` float tensor into a list of ``{class: probability}``
dicts, one per row; the ONNX backend then turns those dicts back into the same float32 tensor
(the values are float32 on both sides, so the round trip is exact). Removing the node from the
graph skips both conversions: onnxruntime builds no Python dicts and the backend reads none,
which at batch 32 on the iris models is most of the call.

The model's bytes are edited here as protobuf (the ``onnx`` package is not a runtime
dependency): the ZipMap node is dropped and its graph output is replaced by its input tensor,
typed ``tensor(float)``. Only a ZipMap whose class labels are already in sorted order is removed
(the backend's columns are the classes in key order); anything unexpected leaves the model as it
is, and the backend converts the dicts as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from edge_agent.runtime._protobuf import ProtobufError, varint

# ModelProto.graph; GraphProto.node / output / value_info; NodeProto.input / output / op_type /
# attribute / domain; AttributeProto.name / ints / strings; ValueInfoProto.name / type
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 12, 13
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTR, _NODE_DOMAIN = 1, 2, 4, 5, 7
_ATTR_NAME, _ATTR_INTS, _ATTR_STRINGS = 1, 8, 9
_VALUE_NAME = 1
_FLOAT = 1  # TensorProto.FLOAT


class _Malformed(Exception):
    """The bytes are not the protobuf this module expects; the model is left as it is."""


@dataclass(frozen=True, slots=True)
class _Field:
    number: int
    wire: int
    start: int  # the tag's first byte
    end: int  # one past the field's last byte
    value: int  # a varint's value, or where a length-delimited payload starts


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    try:
        return varint(buf, pos)
    except ProtobufError:
        raise _Malformed from None


def _fields(buf: bytes) -> Iterator[_Field]:
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, value = _varint(buf, pos)
            pos = value + length
        elif wire in (1, 5):
            value, pos = 0, pos + (8 if wire == 1 else 4)
        else:
            raise _Malformed
        if pos > len(buf):
            raise _Malformed
        yield _Field(number, wire, start, pos, value)


def _payload(buf: bytes, f: _Field) -> bytes:
    if f.wire != 2:
        raise _Malformed
    return buf[f.value : f.end]


def _text(buf: bytes, f: _Field) -> str:
    try:
        return _payload(buf, f).decode()
    except UnicodeDecodeError:
        raise _Malformed from None


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _float_output(name: str) -> bytes:
    """ValueInfoProto ``name`` of type tensor(float), shape left to the runtime."""
    tensor_type = _encode_varint(1 << 3 | 0) + _encode_varint(_FLOAT)  # TypeProto.Tensor.elem_type
    return _len_field(_VALUE_NAME, name.encode()) + _len_field(2, _len_field(1, tensor_type))


@dataclass(frozen=True, slots=True)
class _Node:
    field: _Field
    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    keys: tuple[int, ...] | tuple[str, ...] | None  # a ZipMap's class labels


def _ints(buf: bytes, f: _Field) -> list[int]:
    if f.wire == 0:
        raw = [f.value]
    else:  # packed
        data, raw, pos = _payload(buf, f), [], 0
        while pos < len(data):
            v, pos = _varint(data, pos)
            raw.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in raw]


def _labels(attr: bytes) -> tuple[int, ...] | tuple[str, ...] | None:
    name, ints, strings = "", [], []
    for f in _fields(attr):
        if f.number == _ATTR_NAME:
            name = _text(attr, f)
        elif f.number == _ATTR_INTS:
            ints += _ints(attr, f)
        elif f.number == _ATTR_STRINGS:
            strings.append(_text(attr, f))
    if name == "classlabels_int64s":
        return tuple(ints)
    if name == "classlabels_strings":
        return tuple(strings)
    return None


def _node(buf: bytes, f: _Field) -> _Node:
    node = _payload(buf, f)
    op = domain = ""
    inputs: list[str] = []
    outputs: list[str] = []
    keys: tuple[int, ...] | tuple[str, ...] | None = None
    for g in _fields(node):
        if g.number == _NODE_INPUT:
            inputs.append(_text(node, g))
        elif g.number == _NODE_OUTPUT:
            outputs.append(_text(node, g))
        elif g.number == _NODE_OP:
            op = _text(node, g)
        elif g.number == _NODE_DOMAIN:
            domain = _text(node, g)
        elif g.number == _NODE_ATTR:
            keys = _labels(_payload(node, g)) or keys
    return _Node(f, op, domain, tuple(inputs), tuple(outputs), keys)


def _value_name(value_info: bytes) -> str:
    return next((_text(value_info, g) for g in _fields(value_info) if g.number == _VALUE_NAME), "")


def without_zipmap(model: bytes, outputs: Collection[str]) -> tuple[bytes, dict[str, str]] | None:
    """The model with the ZipMap nodes producing ``outputs`` removed, and, for each output
    removed, the name of the probability tensor to fetch instead; None when none was removed."""
    try:
        return _strip(model, outputs)
    except _Malformed:
        return None


def _strip(model: bytes, outputs: Collection[str]) -> tuple[bytes, dict[str, str]] | None:
    top = list(_fields(model))
    graphs = [f for f in top if f.number == _MODEL_GRAPH]
    if len(graphs) != 1:
        return None
    graph = _payload(model, graphs[0])
    fields = list(_fields(graph))
    nodes = [_node(graph, f) for f in fields if f.number == _GRAPH_NODE]
    consumed = {name for n in nodes for name in n.inputs}
    declared = {_value_name(_payload(graph, f)) for f in fields if f.number == _GRAPH_OUTPUT}
    fetch: dict[str, str] = {}  # ZipMap output -> its input
    dropped: set[int] = set()
    for n in nodes:
        if n.op != "ZipMap" or n.domain != "ai.onnx.ml" or len(n.inputs) != 1 or len(n.outputs) != 1:
            continue
        out, src = n.outputs[0], n.inputs[0]
        ordered = n.keys is not None and list(n.keys) == sorted(n.keys)
        if out in outputs and out in declared and out not in consumed and src not in declared and ordered:
            fetch[out] = src
            dropped.add(n.field.start)
    if not fetch:
        return None
    parts: list[bytes] = []
    for f in fields:
        if f.start in dropped:
            continue
        if f.number in (_GRAPH_OUTPUT, _GRAPH_VALUE_INFO):
            name = _value_name(_payload(graph, f))
            if name in fetch:
                if f.number == _GRAPH_OUTPUT:
                    parts.append(_len_field(_GRAPH_OUTPUT, _float_output(fetch[name])))
                continue
        parts.append(graph[f.start : f.end])
    new_graph = _len_field(_MODEL_GRAPH, b"".join(parts))
    g = graphs[0]
    return model[: g.start] + new_graph + model[g.end :], fetch
