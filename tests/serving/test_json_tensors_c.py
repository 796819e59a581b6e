"""JSON tensors decoded in C (``serving/json_tensors.py``).

What the decoder gives is what orjson and one ``np.array`` call give (dtype, shape, every value,
the sign of zeros), or nothing, and the body goes to orjson: never a different answer. Through
the handlers' own decoding (``/v1`` and ``/predict``: ``tensors_from_doc`` then the engine's
checks; ``/v2``: ``_decode_inputs``) every body gets the same tensors or the same error message
as with orjson alone; a few over HTTP too."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.inputs import MAX_DEPTH, validate
from edge_agent.runtime.package import Manifest, TensorSpec, read_manifest
from edge_agent.serving import json_tensors
from edge_agent.serving.codec import loads, tensors_from_doc
from edge_agent.serving.json_tensors import V1, V2, JsonArray, Layout, parse
from edge_agent.serving.v2 import _decode_inputs
from tests.conftest import MODELS
from tests.serving.gateway_proc import Gateway

MAX_ROWS = 8


def _same(got: Any, want: Any) -> None:
    """``got`` (the decoder's document) is ``want`` (orjson's), a JsonArray standing for lists."""
    if isinstance(got, JsonArray):
        ref = np.array(want)
        assert (got.array.dtype, got.array.shape) == (ref.dtype, ref.shape)
        assert got.array.flags.writeable and got.array.flags.c_contiguous  # as numpy's own array
        np.testing.assert_array_equal(got.array, ref)
        if ref.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(got.array), np.signbit(ref))
        assert got.tolist() == want
    elif isinstance(got, dict):
        assert isinstance(want, dict) and list(got) == list(want)
        for key in got:
            _same(got[key], want[key])
    elif isinstance(got, list):
        assert isinstance(want, list) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _same(a, b)
    else:
        assert type(got) is type(want) and got == want


def _arrays(doc: Any) -> int:
    if isinstance(doc, JsonArray):
        return 1
    if isinstance(doc, dict):
        return sum(_arrays(v) for v in doc.values())
    if isinstance(doc, list):
        return sum(_arrays(v) for v in doc)
    return 0


def _v2(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _inp(data: Any, shape: list[int], dtype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": dtype, "data": data}


# -- decoded in C: as orjson + numpy ------------------------------------------------------------
DECODED: list[tuple[bytes, Layout, int]] = [
    (b'{"data": [[1.5, 2], [3, 4]]}', V1, 1),  # mixed integers and floats: float64
    (b'{"data": [[1, 2], [3, 4]]}', V1, 1),  # integers only: int64
    (b'{"data": [-0, 0.0, -0.0, 1e-400, 5e-324, 1E+2, 0.1e1]}', V1, 1),
    (b'{"data": [9223372036854775807, -9223372036854775808]}', V1, 1),
    (b'{"data": [9223372036854774784, 1.5]}', V1, 1),  # the largest float64 under 2**63
    (b'{"data": [\n [1,\t2],\r\n [3 , 4] ] }\n', V1, 1),  # whitespace anywhere
    (b'{"data": [' + b"[" * (MAX_DEPTH - 1) + b"1" + b"]" * (MAX_DEPTH - 1) + b"]}", V1, 1),
    (b'{"data": 5}', V1, 0),  # not an array: as orjson gives it
    (b'{"inputs": {"a": [[1, 2]], "b": [3.5]}, "extra": [[1], {"x": [2]}], "s": "a"}', V1, 2),
    (b'{"images": ["aGVsbG8="]}', V1, 0),
    (b'{"data": [1.0, 2.0], "inputs": [1, [2]], "x": {"data": [3]}}', V1, 1),  # tensors only where V1 says
    (b"{}", V1, 0),
    (orjson.dumps({f"k{i}": [i] for i in range(json_tensors.MAX_KEYS - 1)} | {"data": [1]}), V1, 1),
    (
        _v2(
            _inp([1, 2, 3, 4.5], [2, 2]),
            outputs=[{"name": "y", "parameters": {"binary_data": False}}],
            id="r",
        ),
        V2,
        1,
    ),
    (_v2(_inp([[1, 2], [3, 4.5]], [2, 2]), _inp([7], [1], "INT32", "z")), V2, 2),
    (_v2(_inp(2.5, [1]), parameters={"binary_data_output": True, "k": [[1, 2], []]}), V2, 0),
    (b'{"inputs": [1, [2], {"data": [[3]]}], "outputs": null}', V2, 1),
    (b'{"inputs": 7}', V2, 0),
]


@pytest.mark.parametrize(("body", "layout", "arrays"), DECODED)
def test_tensors_decoded_in_c_are_what_orjson_and_numpy_give(
    body: bytes, layout: Layout, arrays: int
) -> None:
    got = parse(body, layout)
    assert got is not None
    _same(got, orjson.loads(body))
    assert _arrays(got) == arrays


def test_float32_inputs_come_out_as_with_orjson() -> None:
    """float32 values written by orjson (shortest float32 form) and as doubles: the float32 array the
    engine makes of them is the same, bit for bit."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.standard_normal(3000), rng.uniform(-1e38, 1e38, 500), rng.uniform(-1e-38, 1e-38, 500)]
    ).astype(np.float32)
    for body in (
        orjson.dumps({"data": x.reshape(4, 10, 100)}, option=orjson.OPT_SERIALIZE_NUMPY),
        orjson.dumps({"data": x.astype(np.float64).tolist()}),
        json.dumps({"data": x.tolist()}, separators=(", ", ": ")).encode(),
    ):
        got = parse(body, V1)
        assert got is not None
        old = np.array(orjson.loads(body)["data"]).astype(np.float32)
        assert got["data"].array.astype(np.float32).tobytes() == old.tobytes()


# -- not decoded here: orjson parses them, as before --------------------------------------------
NOT_HERE: list[tuple[bytes, Layout]] = [
    (b'{"data": [[1, 2], [3]]}', V1),  # ragged, count off
    (b'{"data": [[1, 2], [3], [4, 5, 6]]}', V1),  # ragged, count fits
    (b'{"data": [[1, [2]], [3, 4]]}', V1),  # an array where a number belongs, count fits
    (b'{"data": [[1, []], [3, 4]]}', V1),
    (b'{"data": [[[], 5], [1, [2, 3]]]}', V1),  # an empty and a longer row: count fits
    (b'{"data": [1, [2], 3]}', V1),
    (b'{"data": [[1, 2], 3]}', V1),  # numbers and lists at one level
    (b'{"data": [true, 2]}', V1),
    (b'{"data": [2, true]}', V1),  # numpy makes 1 of true: orjson's lists decide
    (b'{"data": [2, null]}', V1),
    (b'{"data": [2, "3"]}', V1),
    (b'{"data": [2, {"a": 1}]}', V1),
    (b'{"data": []}', V1),
    (b'{"data": [[]]}', V1),
    (b'{"data": [9223372036854775808, 1]}', V1),  # uint64 for numpy
    (b'{"data": [9223372036854775808, 1.5]}', V1),  # maybe (not told apart from the one above)
    (b'{"data": [9223372036854775807, 1.5]}', V1),  # 2**63 - 1 is 2**63 as a float64: the same
    (b'{"data": [18446744073709551616, 1]}', V1),  # orjson makes a float of it
    (b'{"data": [1e400]}', V1),  # orjson refuses it
    (b'{"data": [1, 2.0.0]}', V1),
    (b'{"data": [1], "data": [2]}', V1),  # orjson keeps the last, simdjson would find the first
    (orjson.dumps({f"k{i}": i for i in range(json_tensors.MAX_KEYS)} | {"data": [1]}), V1),  # many keys
    (b'{"data": [1], "x": "[a]"}', V1),  # a "[" in a string: not accounted for
    (b'{"data": [1], "x": "\\u005b"}', V1),  # any escape
    (b'\xef\xbb\xbf{"data": [1]}', V1),  # a byte-order mark orjson refuses
    (b' {"data": [1]}', V1),
    (b'{"data": [' + b"[" * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH + b"]}", V1),  # too deep: the engine says so
    (b'{"data": [1, 2]', V1),
    (b"[1, 2]", V1),
    (b"", V1),
    (b'{"data": [1]}garbage', V1),
    (_v2(_inp(["aGk="], [1], "BYTES")), V2),
    (_v2(_inp([True, False], [2], "BOOL")), V2),
    (_v2(_inp([1, [2], 3], [3])), V2),
    (_v2(_inp([1.0], [1], name="[x]")), V2),
    (_v2(_inp([1.0], [1]), _inp([[1, 2], [3]], [3], name="y")), V2),  # one input not decodable: all to orjson
]


@pytest.mark.parametrize(("body", "layout"), NOT_HERE)
def test_unusual_bodies_are_left_to_orjson(body: bytes, layout: Layout) -> None:
    assert parse(body, layout) is None


# -- random documents: decoded as orjson + numpy, or left to orjson -------------------------------
NUMBERS = st.one_of(
    st.integers(-(2**66), 2**66),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-2, 2, width=32),
)
LEAVES = st.one_of(NUMBERS, NUMBERS, st.booleans(), st.none(), st.just("1"))
NESTED = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4), max_leaves=40)
SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")])


def _rectangular(value: Any) -> bool:
    """What from_nested accepts: one numpy conversion to numbers, as deep as the first elements."""
    depth, first = 0, value
    while isinstance(first, list) and first:
        depth, first = depth + 1, first[0]
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return False
    return arr.dtype.kind in "biuf" and arr.ndim == depth and arr.size > 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=NESTED, separators=SEPARATORS)
def test_random_nesting_is_never_decoded_differently(value: Any, separators: tuple[str, str]) -> None:
    body = json.dumps({"data": value}, separators=separators).encode()
    got = parse(body, V1)
    if got is None:
        return
    want = orjson.loads(body)
    _same(got, want)
    if isinstance(got["data"], JsonArray):
        assert _rectangular(want["data"])


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    kind=st.sampled_from(["f", "i", "mixed"]),
    seed=st.integers(0, 2**32 - 1),
    separators=SEPARATORS,
)
def test_random_rectangular_arrays_are_decoded(
    shape: list[int], kind: str, seed: int, separators: tuple[str, str]
) -> None:
    rng = np.random.default_rng(seed)
    arr: np.ndarray = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
    if kind != "f":
        arr = np.round(arr / 1e25).astype(np.int64)
    value = arr.tolist()
    if kind == "mixed":
        flat = arr.reshape(-1).tolist()
        flat[-1] = float(flat[-1])
        value = np.array(flat, dtype=object).reshape(shape).tolist()
    body = json.dumps({"inputs": [_inp(value, shape)]}, separators=separators).encode()
    got = parse(body, V2)
    assert got is not None
    _same(got, orjson.loads(body))


# -- through the handlers' decoding: the same tensors, or the same error ------------------------
def _outcome(decode: Callable[[], dict[str, Any] | None]) -> Any:
    try:
        tensors = decode()
    except EdgeAgentError as exc:
        return ("refused", type(exc).__name__, exc.status, exc.message)
    return {
        k: (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else ("lists", v)
        for k, v in (tensors or {}).items()
    }


@pytest.fixture(scope="module")
def iris() -> Manifest:
    return read_manifest(MODELS / "iris" / "1")


def _single(m: Manifest, dtype: str, shape: list[int | None]) -> Manifest:
    spec = TensorSpec(name="x", dtype=dtype, shape=shape)  # type: ignore[arg-type]
    return m.model_copy(update={"inputs": [spec]})


V1_BODIES = [
    {"data": [[5.1, 3.5, 1.4, 0.2]]},
    {"data": [5.1, 3.5, 1.4, 0.2]},  # one sample, no batch dimension
    {"data": [[5, 3, 1, 0], [6, 3, 6, 2]]},
    {"data": [[1.0, 2.0, 3.0]]},  # wrong width
    {"data": [[[1.0, 2.0, 3.0, 4.0]]]},  # too deep
    {"data": [[1, 2, 3, 4], [1, 2]]},
    {"data": [[1, 2, 3, 4], [1, [2], 3, 4]]},
    {"data": [[1, 2, 3, 4], [True, 2, 3, 4]]},
    {"data": [[1e39, 2, 3, 4]]},  # out of float32 range
    {"data": [[1, 2, 3, 4]] * (MAX_ROWS + 1)},  # over the row limit
    {"data": [[1, 2, 3]] * (MAX_ROWS + 1)},  # over the row limit and the wrong width: the limit speaks
    {"data": [[1, 2, 3, 4]] * MAX_ROWS},
    {"inputs": {"float_input": [[1, 2, 3, 4]]}},
    {"inputs": {"other": [[1, 2, 3, 4]]}},
    {"inputs": {"float_input": [[1, 2, 3, 4]], "other": [1]}},
    {"inputs": [[1, 2, 3, 4]]},
    {"data": []},
    {"data": "abc"},
]


@pytest.mark.parametrize("body", [orjson.dumps(b) for b in V1_BODIES])
@pytest.mark.parametrize(
    ("dtype", "shape"), [("float32", [None, 4]), ("int8", [None, 4]), ("int64", [2, 4]), ("bool", [None, 4])]
)
def test_v1_bodies_get_the_same_tensors_or_errors(
    iris: Manifest, body: bytes, dtype: str, shape: list[int | None]
) -> None:
    m = iris if dtype == "float32" else _single(iris, dtype, shape)

    def old() -> dict[str, Any]:
        tensors, _ = tensors_from_doc(loads(body), m)
        return validate(m, tensors or {}, MAX_ROWS)

    def new() -> dict[str, Any]:
        tensors, _ = tensors_from_doc(loads(body, V1), m, MAX_ROWS)
        return validate(m, tensors or {}, MAX_ROWS)

    assert _outcome(new) == _outcome(old)


V2_CASES: list[tuple[Any, list[int], str]] = [
    ([[1, 2], [3, 4]], [2, 2], "FP32"),
    ([1, 2, 3, 4], [2, 2], "FP32"),
    ([[1, 2, 3, 4]], [4], "INT8"),
    ([1.5, 2.0], [2], "INT32"),
    ([3.0, -2.0], [2], "INT32"),
    ([-1, 2], [2], "UINT8"),
    ([1, 2, 3, 999], [4], "INT8"),
    ([1e10], [1], "INT32"),
    ([1e39], [1], "FP32"),
    ([1e39], [1], "FP16"),
    ([70000.0, 1], [2], "FP16"),
    ([1, 0], [2], "BOOL"),
    ([0.5, 1.0], [2], "BOOL"),
    ([True, False], [2], "BOOL"),
    ([True, 7], [2], "UINT8"),
    ([[1, 2], [3]], [3], "FP32"),
    ([[1, 2], [3, 4, 5]], [4], "FP32"),
    ([[1, 2], [3, [4]]], [4], "FP32"),
    ([[1, 2], 3, 4], [6], "FP32"),
    ([1, "a", 3, 4], [4], "FP32"),
    ([1, None, 3, 4], [4], "FP32"),
    ([1.0] * 4, [3], "FP32"),
    ([1.0] * 4, [1 << 30, 4], "FP32"),
    ([2**63 - 1, -(2**63)], [2], "INT64"),
    ([9007199254740993, 1], [2], "FP32"),  # an integer over 2**53: int64 -> float32 as before
    ([9007199254740993, 1], [2], "FP64"),
    ([1.0, 2.0], [2], "BYTES"),
    ([[[[1.5]]]], [1, 1, 1, 1], "FP64"),
]


@pytest.mark.parametrize(("data", "shape", "dtype"), V2_CASES)
def test_v2_bodies_get_the_same_tensors_or_errors(
    iris: Manifest, data: Any, shape: list[int], dtype: str
) -> None:
    body = _v2(_inp(data, shape, dtype, "float_input"))
    empty = memoryview(b"")
    assert _outcome(lambda: _decode_inputs(loads(body, V2), empty, iris)[0]) == _outcome(
        lambda: _decode_inputs(loads(body), empty, iris)[0]
    )


# -- the parser: one per thread, a new one when a proxy outlives its body ------------------------
def test_one_parser_per_thread_and_large_bodies() -> None:
    bodies = [orjson.dumps({"data": np.full((4, 8), float(i)).tolist()}) for i in range(16)]
    big = orjson.dumps({"data": np.arange(60_000, dtype=np.float64).reshape(600, 100).tolist()})
    assert len(big) > json_tensors.KEEP_PARSER_BYTES

    def decode(i: int) -> float:
        doc = parse(big if i % 7 == 0 else bodies[i % 16], V1)
        assert doc is not None
        return float(doc["data"].array.sum())

    with ThreadPoolExecutor(4) as pool:
        sums = list(pool.map(decode, range(200)))
    assert sums == [float(np.arange(60_000).sum()) if i % 7 == 0 else 32.0 * (i % 16) for i in range(200)]


def test_a_proxy_left_alive_does_not_block_the_next_body() -> None:
    box: dict[str, Any] = {}

    def run() -> None:
        box["proxy"] = json_tensors._parse(b'{"a": [1, 2]}')  # a proxy outliving its parse
        box["doc"] = parse(b'{"data": [1.5]}', V1)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    _same(box["doc"], {"data": [1.5]})


# -- over HTTP ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/models/iris/predict", {"data": [[1, 2, 3, 4], [1, [2], 3, 4]]}, "not a rectangular array"),
        ("/v1/models/iris/predict", {"data": [[1, 2, 3, 4], [1, 2, 3, True]]}, None),  # true is 1
        ("/predict", {"data": [[1, 2, 3, 4], [1, 2], [1, 2, 3, 4, 5, 6]]}, "not a rectangular array"),
        (
            "/v2/models/iris/infer",
            {"inputs": [_inp([[1, 2], [[3], 4]], [1, 4], name="float_input")]},
            "not a",
        ),
        ("/v2/models/iris/infer", {"inputs": [_inp([1, 2, 3, 4.5], [1, 4], name="float_input")]}, None),
    ],
)
def test_json_tensors_over_http(
    gateway: Gateway, path: str, body: dict[str, Any], needle: str | None
) -> None:
    r = httpx.post(
        gateway.url + path, content=orjson.dumps(body), headers={"content-type": "application/json"}
    )
    if needle is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"] and r.json()["code"] == "invalid_input"


def test_json_and_npy_bodies_get_the_same_answer(gateway: Gateway) -> None:
    """Decoded in C from JSON or read from .npy bytes: the same float32 input, the same outputs."""
    x = np.random.default_rng(1).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)
    npy = io.BytesIO()
    np.save(npy, x)
    answers = [
        httpx.post(
            gateway.url + "/v1/models/digits/predict?raw=true",
            content=body,
            headers={"content-type": ctype, "cache-control": "no-cache"},
        )
        for body, ctype in [
            (orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"),
            (npy.getvalue(), "application/x-npy"),
        ]
    ]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    as_json, as_npy = (r.json() for r in answers)
    assert as_json["outputs"] == as_npy["outputs"] and as_json["results"] == as_npy["results"]


@pytest.mark.parametrize(
    ("rows", "cols", "way"),
    [(8, 4, "count"), (4096, 4, "numpy"), (16, 256, "replace"), (2048, 64, "replace")],
)
def test_an_array_hidden_in_a_row_is_found_whichever_way_the_brackets_are_counted(
    rows: int, cols: int, way: str
) -> None:
    """The ``[`` count (bytes.count for small bodies of dense brackets, numpy for large ones,
    bytes.replace for sparse brackets) is what notices a row holding an array where a number
    belongs, with every row of the right length."""
    data = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) + 0.5
    good = orjson.dumps({"data": data.tolist()})
    sneaky = good.replace(b",2.5,", b",[2.5],", 1)  # row 0: [0.5, 1.5, [2.5], 3.5, ...]
    assert sneaky != good
    arrays = rows + 1
    sparse = arrays * json_tensors.SPARSE_BYTES_PER_BRACKET < len(good)
    taken = "replace" if sparse else "count" if len(good) <= json_tensors.COUNT_BYTES_MAX else "numpy"
    assert taken == way
    assert json_tensors._brackets(good, arrays) == arrays
    assert json_tensors._brackets(sneaky, arrays) == arrays + 1
    doc = parse(good, V1)
    assert doc is not None and np.array_equal(doc["data"].array, data)
    assert parse(sneaky, V1) is None  # left to orjson, which refuses it with its message
