"""Open Inference Protocol v2 (KServe / Triton REST), with the binary tensor
data extension: a JSON header of ``Inference-Header-Content-Length`` bytes,
then raw little-endian tensor bytes, for requests and responses.

Image models also take a BYTES input of encoded images (JPEG/PNG/BMP); their
answers then come back in the images' own pixels. Detection models expose a
``boxes`` output (FP32 ``[M, 7]``: image index, score, xmin, ymin, xmax,
ymax, class index) besides their raw tensors. The classification extension
(``"parameters": {"classification": k}`` on a requested output) returns
``"score:index:label"`` strings.
"""

from __future__ import annotations

import base64
import binascii
import struct
import sys
from math import prod
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent import __version__
from edge_agent.errors import InvalidInput
from edge_agent.runtime.engine import Prediction
from edge_agent.runtime.inputs import from_nested, nested_shape
from edge_agent.runtime.package import DETECTORS, Classification, Manifest
from edge_agent.serving.codec import json_response, loads
from edge_agent.serving.deps import Gateway, gateway
from edge_agent.serving.json_tensors import V2, JsonArray
from edge_agent.serving.openapi import Responses, errors, no_content

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

V2_TO_NP: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# looked up by the (native) dtype itself: ``dtype.name`` runs Python code
NP_TO_V2 = {v.newbyteorder("="): k for k, v in V2_TO_NP.items()}
_LITTLE = sys.byteorder == "little"
MANIFEST_TO_V2 = {
    "float32": "FP32",
    "float16": "FP16",
    "int8": "INT8",
    "uint8": "UINT8",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
}
READY: Responses = {
    200: no_content("Ready"),
    400: no_content("Not ready (not loaded, or failed its self-test)"),
}
READY |= errors(404)
INFER: Responses = {
    200: {
        "description": "Outputs: JSON, or a JSON header then binary tensors (binary_data)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **errors(404, 422, 503),
}
PLATFORM = {"onnx": "onnxruntime_onnx", "litert": "tensorflow_lite"}
INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                "datatype": {"type": "string", "enum": [*V2_TO_NP, "BYTES"]},
                                "parameters": {"type": "object"},
                                "data": {"type": "array", "items": {}},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        },
                    },
                },
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


# -- health and metadata ----------------------------------------------------------
@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "edge-agent",
        "version": __version__,
        "extensions": ["binary_tensor_data", "classification", "model_repository"],
    }


@router.get(
    "/health/live",
    summary="Liveness (200, empty body)",
    response_class=Response,
    responses={200: no_content("The server is live")},
)
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/health/ready",
    summary="Readiness: every model loaded and self-tested (200 ready, 400 not; empty body)",
    response_class=Response,
    responses={200: no_content("Ready"), 400: no_content("Not ready yet")},
)
async def ready(request: Request) -> Response:
    return Response(status_code=200 if gateway(request).ready else 400)


def _tensor_meta(name: str, dtype: str, shape: list[int | None]) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": MANIFEST_TO_V2.get(dtype, "FP32"),
        "shape": [-1 if d is None else d for d in shape],
    }


def _model_metadata(request: Request, name: str, version: str | None) -> dict[str, Any]:
    engine = gateway(request).engine
    version = version or engine.active_version(name) or engine.store.active_version(name)
    m = engine.store.manifest(name, version)
    outputs = [_tensor_meta(t.name, t.dtype, t.shape) for t in m.outputs]
    if isinstance(m.postprocessing, DETECTORS):
        outputs.append({"name": "boxes", "datatype": "FP32", "shape": [-1, 7]})
    inputs = [_tensor_meta(t.name, t.dtype, t.shape) for t in m.inputs]
    if m.preprocessing is not None:
        inputs.append(
            {
                "name": m.preprocessing.input,
                "datatype": "BYTES",
                "shape": [-1],
                "parameters": {"note": "encoded JPEG/PNG/BMP images, one per element"},
            }
        )
    return {
        "name": name,
        "versions": engine.store.versions(name),
        "platform": PLATFORM[m.backend],
        "inputs": inputs,
        "outputs": outputs,
    }


@router.get("/models/{name}", summary="Model metadata", responses=errors(404))
async def model_metadata(name: str, request: Request) -> Response:
    return json_response(_model_metadata(request, name, None))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", responses=errors(404))
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    gateway(request).engine.store.package_dir(name, version)
    return json_response(_model_metadata(request, name, version))


def _ready(request: Request, name: str, version: str | None) -> Response:
    engine = gateway(request).engine
    if version is not None:
        engine.store.package_dir(name, version)
    else:
        engine.store.active_version(name)  # 404 for an unknown model
    return Response(status_code=200 if engine.is_ready(name, version) else 400)


@router.get(
    "/models/{name}/ready",
    summary="Model readiness (200 ready, 400 not; empty body)",
    response_class=Response,
    responses=READY,
)
async def model_ready(name: str, request: Request) -> Response:
    return _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness (200 ready, 400 not; empty body)",
    response_class=Response,
    responses=READY,
)
async def model_version_ready(name: str, version: str, request: Request) -> Response:
    return _ready(request, name, version)


# -- request decoding ---------------------------------------------------------------
def _split_body(request: Request, body: bytes) -> tuple[Any, memoryview]:
    if request.headers.get("content-encoding"):
        raise InvalidInput("compressed request bodies are not supported; send them uncompressed")
    header_len = request.headers.get("inference-header-content-length")
    if header_len is None:
        return loads(body, V2), memoryview(b"")
    try:
        n = int(header_len)
    except ValueError:
        raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
    if not 0 < n <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
    return loads(body[:n]), memoryview(body)[n:]


def _parse_bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    out: list[bytes] = []
    off = 0
    while off < len(raw):
        if off + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element length prefix is truncated")
        (n,) = struct.unpack_from("<I", raw, off)
        off += 4
        if off + n > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element runs past the end of its data")
        out.append(bytes(raw[off : off + n]))
        off += n
    if len(out) != count:
        raise InvalidInput(f"input {name!r}: shape holds {count} elements, data holds {len(out)}")
    return out


def _json_tensor(name: str, data: Any, shape: list[int], dtype: str, count: int) -> np.ndarray:
    """JSON ``data`` (flat or nested row-major) -> an array of ``dtype`` and ``shape``.

    The element count is checked from the lists' structure before anything is
    converted; the conversion is one numpy call (dtype from the JSON, so strings
    such as "1.5" are refused, not parsed), then ``_fits`` casts to the datatype
    with vectorised checks (no Python work per element). Data decoded in C
    (``JsonArray``) is that numpy call's array already."""
    decoded = data.array if isinstance(data, JsonArray) else None
    if decoded is None and not isinstance(data, list):
        data = [data]
    nested = list(decoded.shape) if decoded is not None else nested_shape(data, name)
    claimed = prod(nested)
    if claimed != count:
        held = f"data has {claimed}" if len(nested) == 1 else f"data nested as {nested} hold {claimed}"
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} elements, {held}")
    target = V2_TO_NP[dtype]
    # dtype from the JSON: strings, nulls, ragged rows refused
    arr = decoded if decoded is not None else from_nested(name, data, nested)
    return _fits(name, arr, target, dtype).reshape(shape)


def _fits(name: str, arr: np.ndarray, target: np.dtype[Any], dtype: str) -> np.ndarray:
    """``arr`` (what the JSON held) as ``target``, refusing what would change a value: booleans only
    for BOOL, integers (or integral numbers) within range for the integer types, finite numbers for
    the float types. Vectorised: a few passes over the array, none per element in Python."""
    kind = arr.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise InvalidInput(f"input {name!r}: BOOL data must be true or false, not numbers", input=name)
        return arr
    if target.kind in "iu" and kind != "b":
        if kind == "f" and arr.size and not (arr == np.trunc(arr)).all():
            raise InvalidInput(f"input {name!r}: {dtype} data must be whole numbers, not fractions")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInput(
                f"input {name!r}: {dtype} data must lie in [{info.min}, {info.max}]", input=name
            )
    elif target.kind == "f" and arr.size and arr.dtype.itemsize > target.itemsize:
        top = float(np.finfo(target).max)  # checked before the cast: no overflow, no warning
        if not (np.isfinite(arr).all() and arr.max() <= top and arr.min() >= -top):
            raise InvalidInput(f"input {name!r}: data are not all {dtype} numbers (out of range)")
    return arr.astype(target, copy=False)


def _bytes_elements(name: str, data: Any, count: int) -> list[Any]:
    """BYTES data in JSON: a flat list of strings (one per element); nesting is read row-major."""
    flat = data if isinstance(data, list) else [data]
    while any(isinstance(v, list) for v in flat):  # few elements: one per image
        flat = [w for v in flat for w in (v if isinstance(v, list) else [v])]
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape holds {count} elements, data has {len(flat)}")
    return flat


def _decode_inputs(
    doc: Any, binary: memoryview, manifest: Manifest
) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInput('request must have a non-empty "inputs" list')
    tensors: dict[str, Any] = {}
    images: list[bytes] | None = None
    offset = 0
    for i, inp in enumerate(doc["inputs"]):
        if not isinstance(inp, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape, dtype = inp.get("name"), inp.get("shape"), inp.get("datatype")
        if not isinstance(name, str) or not isinstance(shape, list) or not isinstance(dtype, str):
            raise InvalidInput(f"inputs[{i}] needs a string name, a shape list and a datatype string")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape):
            raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
        if dtype != "BYTES" and dtype not in V2_TO_NP:
            raise InvalidInput(
                f"input {name!r}: unknown datatype {dtype!r}; use one of {[*V2_TO_NP, 'BYTES']}"
            )
        count = prod(shape)
        params = inp.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input {name!r}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {size!r} does not fit the binary body")
            raw = binary[offset : offset + size]
            offset += size
            if dtype == "BYTES":
                value: Any = _parse_bytes_elements(raw, count, name)
            else:
                np_dtype = V2_TO_NP[dtype]
                if size != count * np_dtype.itemsize:
                    raise InvalidInput(
                        f"input {name!r}: shape {shape} of {dtype} needs {count * np_dtype.itemsize} bytes, "
                        f"got {size}"
                    )
                value = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
        else:
            if "data" not in inp:
                raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
            if dtype == "BYTES":
                data = inp["data"].tolist() if isinstance(inp["data"], JsonArray) else inp["data"]
                value = [_bytes_from_json(v, name) for v in _bytes_elements(name, data, count)]
            else:
                value = _json_tensor(name, inp["data"], shape, dtype, count)
        if dtype == "BYTES":
            pre = manifest.preprocessing
            if pre is None or name != pre.input:
                raise InvalidInput(
                    f"input {name!r}: BYTES (encoded images) are taken only by image models' image input"
                )
            images = list(value)
        else:
            tensors[name] = value
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    if images is not None:
        if tensors:
            raise InvalidInput("send either encoded images or tensors, not both")
        return None, images
    return tensors, None


def _bytes_from_json(v: Any, name: str) -> bytes:
    if not isinstance(v, str):
        raise InvalidInput(f"input {name!r}: BYTES data must be strings (base64 for images)")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {name!r}: BYTES data in JSON must be base64-encoded images") from None


# -- response encoding ----------------------------------------------------------
def _boxes(pred: Prediction) -> np.ndarray:
    rows = [
        [i, b["score"], b["xmin"], b["ymin"], b["xmax"], b["ymax"], b.get("class_index", 0)]
        for i, r in enumerate(pred.results)
        for b in r.get("boxes", [])
    ]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 7)


def _classification(pred: Prediction, manifest: Manifest, output: str, k: int) -> list[list[bytes]]:
    post = manifest.postprocessing
    labels = manifest.labels
    if isinstance(post, Classification) and post.output == output:
        probs = np.asarray([r["probabilities"] for r in pred.results], dtype=np.float32)
    else:
        probs = pred.outputs[output].reshape(len(pred.results), -1).astype(np.float32)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [f"{probs[i, j]:f}:{j}:{labels[j] if j < len(labels) else j}".encode() for j in row]
        for i, row in enumerate(order.tolist())
    ]


def _serialize_bytes(rows: list[list[bytes]]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for row in rows for e in row)


def _encode_response(doc: dict[str, Any], pred: Prediction, manifest: Manifest) -> Response:
    available: dict[str, np.ndarray] = dict(pred.outputs)
    if isinstance(manifest.postprocessing, DETECTORS):
        available["boxes"] = _boxes(pred)
    params = doc.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    requested = doc.get("outputs")
    if requested is None:
        wanted = [{"name": n} for n in available]
    elif isinstance(requested, list) and all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        wanted = requested
    else:
        raise InvalidInput('"outputs" must be a list of objects with a "name"')
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in wanted:
        name = out["name"]
        if name not in available:
            raise InvalidInput(f"unknown output {name!r}; {manifest.name} has {sorted(available)}")
        oparams: Any = out.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise InvalidInput(f"output {name!r}: parameters must be an object")
        binary = bool(oparams.get("binary_data", default_binary))
        k = oparams.get("classification")
        if k is not None:
            if not isinstance(k, int) or k < 1:
                raise InvalidInput(f"output {name!r}: classification must be a positive integer")
            strings = _classification(pred, manifest, name, k)
            entry: dict[str, Any] = {
                "name": name,
                "datatype": "BYTES",
                "shape": [len(strings), len(strings[0])],
            }
            if binary:
                raw = _serialize_bytes(strings)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = [s.decode() for row in strings for s in row]
            entries.append(entry)
            continue
        arr = available[name]
        if not arr.dtype.isnative:  # (the runtimes answer in native order; orjson takes no other)
            arr = arr.astype(arr.dtype.newbyteorder("="))
        dtype = NP_TO_V2.get(arr.dtype)
        if dtype is None:
            arr, dtype = arr.astype(np.float32), "FP32"
        entry = {"name": name, "datatype": dtype, "shape": list(arr.shape)}
        if binary:
            # C order, little-endian: as it is on every platform the agent runs on
            raw = arr.tobytes() if _LITTLE else arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.reshape(-1)
        entries.append(entry)
    body: dict[str, Any] = {
        "model_name": pred.model,
        "model_version": pred.version,
        "outputs": entries,
        "parameters": {"timings_ms": pred.timings_ms},
    }
    if isinstance(doc.get("id"), str):
        body["id"] = doc["id"]
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


async def infer_fast(gw: Gateway, request: Request, name: str) -> Response:
    """The fast path's entry (edge_agent/serving/fastpath.py): the active version."""
    return await _infer(gw, request, name, None)


async def _infer(gw: Gateway, request: Request, name: str, version: str | None) -> Response:
    manifest = gw.engine.model(name, version).manifest
    doc, binary = _split_body(request, await request.body())
    tensors, images = _decode_inputs(doc, binary, manifest)
    pred = await gw.service.predict(name, version, tensors=tensors, images=images)
    return _encode_response(doc, pred, manifest)


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    openapi_extra={"requestBody": INFER_BODY},
    responses=INFER,
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(gateway(request), request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference with one version",
    openapi_extra={"requestBody": INFER_BODY},
    responses=INFER,
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(gateway(request), request, name, version)
