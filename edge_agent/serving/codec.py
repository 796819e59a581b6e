"""Request bodies -> tensors or images; results -> JSON bytes.

The hot path avoids pydantic and per-element Python work: JSON tensors are
decoded in C (``json_tensors``; orjson parses everything else), ``.npy``
bodies are read without a copy.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import Manifest
from edge_agent.serving.json_tensors import V1, JsonArray, Layout, parse

NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/jpg")
JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
MAX_FILES = 64  # images per multipart request


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=JSON_OPTS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def loads(body: bytes, tensors: Layout | None = None) -> Any:
    """The parsed JSON body; with ``tensors`` (``json_tensors.V1`` or ``V2``) the tensors at those
    places come back as ``JsonArray`` when they decode in C (see ``json_tensors.parse``)."""
    if tensors is not None and (doc := parse(body, tensors)) is not None:
        return doc
    if not body:
        raise InvalidInput("empty request body: send JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def b64_image(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a base64 string")
    try:
        return base64.b64decode(
            value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True
        )
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64") from None


def tensors_from_doc(
    doc: Any, manifest: Manifest, max_rows: int | None = None
) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    """JSON forms: {"data": rows} (book), {"inputs": {name: array}}, {"image_data": b64} (book),
    {"images": [b64, ...]}.

    Tensors decoded in C (``loads(body, V1)``) become arrays, which the engine checks exactly as
    it checks the lists they stand for, except for a batch over ``max_rows`` (the engine's
    limit): that one it refuses before looking further, so it gets the lists."""
    if not isinstance(doc, dict):
        raise InvalidInput(
            'expected a JSON object: {"data": [[...]]}, {"inputs": {...}} or {"images": [...]}'
        )
    if "image_data" in doc:
        return None, [b64_image(doc["image_data"], "image_data")]
    if "images" in doc:
        imgs = doc["images"]
        if not isinstance(imgs, list) or not imgs:
            raise InvalidInput('"images" must be a non-empty list of base64 strings')
        return None, [b64_image(v, f"images[{i}]") for i, v in enumerate(imgs)]
    if "inputs" in doc:
        named = doc["inputs"]
        if not isinstance(named, dict):
            raise InvalidInput('"inputs" must map input names to arrays')
        return {k: _tensor(manifest, k, v, max_rows) for k, v in named.items()}, None
    if "data" in doc:
        if len(manifest.inputs) != 1:
            raise InvalidInput(f'{manifest.name} has several inputs; name them: {{"inputs": {{...}}}}')
        name = manifest.inputs[0].name
        return {name: _tensor(manifest, name, doc["data"], max_rows)}, None
    raise InvalidInput('expected "data", "inputs", "image_data" or "images" in the JSON body')


def _tensor(manifest: Manifest, name: str, value: Any, max_rows: int | None) -> Any:
    if not isinstance(value, JsonArray):
        return value
    arr = value.array
    spec = next((t for t in manifest.inputs if t.name == name), None)
    if spec is not None and arr.ndim == len(spec.shape) and (max_rows is None or arr.shape[0] > max_rows):
        return value.tolist()  # a whole batch the engine may refuse as too large before converting
    return arr


async def form_files(
    request: Request, field: str, *, max_files: int, text_fields: tuple[str, ...] = ()
) -> tuple[list[UploadFile], dict[str, str]]:
    """The files uploaded as ``field`` and the named text fields of a multipart body.

    Exactly what the OpenAPI document describes: any other field is refused (422), so is a
    text value where a file belongs. Over ``max_files`` files is a 400 from Starlette's parser.
    """
    form = await request.form(max_files=max_files, max_fields=len(text_fields) + 1)
    files: list[UploadFile] = []
    texts: dict[str, str] = {}
    for name, value in form.multi_items():
        if name == field and isinstance(value, UploadFile):
            files.append(value)
        elif name in text_fields and isinstance(value, str):
            texts[name] = value
        else:
            expected = ", ".join([f"{field!r} (files)", *(repr(t) for t in text_fields)])
            raise InvalidInput(f"unexpected multipart field {name!r}: this route takes {expected}")
    if not files:
        raise InvalidInput(f"multipart body has no file: upload each image as a file field named {field!r}")
    return files, texts


def npy_array(body: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"body is not a valid .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise InvalidInput("body must hold one .npy array, not an archive")
    return arr


async def read_inputs(
    request: Request, manifest: Manifest, max_rows: int | None = None
) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    """Tensors or encoded images from any body the tensor routes take. With ``max_rows`` (the
    engine's limit), JSON tensors are decoded in C (see ``tensors_from_doc``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        files, _ = await form_files(request, "file", max_files=MAX_FILES)
        return None, [await f.read() for f in files]
    body = await request.body()
    if ctype in IMAGE_TYPES:
        return None, [body]
    if ctype in NPY_TYPES:
        if len(manifest.inputs) != 1:
            raise InvalidInput(f"{manifest.name} has several inputs; a .npy body feeds single-input models")
        return {manifest.inputs[0].name: npy_array(body)}, None
    if max_rows is None:
        return tensors_from_doc(loads(body), manifest)
    return tensors_from_doc(loads(body, V1), manifest, max_rows)
