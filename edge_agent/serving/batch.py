"""Batch pattern: the gateway half.

``POST /batch/items`` validates every item against the model's manifest and
stores them all in one transaction, or none of them (a 4xx names the bad
item). The ``batch`` role predicts them later, on its schedule, or at once
after ``POST /batch/run`` rings its doorbell: the gateway never runs batch
inference itself. ``GET /batch/items`` lists items with their results.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.errors import ConfigError, InvalidInput
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.inputs import validate
from edge_agent.runtime.package import Manifest
from edge_agent.serving.codec import (
    IMAGE_TYPES,
    NPY_TYPES,
    b64_image,
    form_files,
    json_response,
    loads,
    npy_array,
)
from edge_agent.serving.deps import Gateway, gateway
from edge_agent.serving.openapi import Responses, errors, multipart_files
from edge_agent.workers.batch_items import FILTERS, BatchItems, PayloadKind, encode_rows
from edge_agent.workers.doorbell import Doorbell
from edge_agent.workers.schedule import batch_doorbell, schedule_from_config

router = APIRouter(prefix="/batch", tags=["batch"])

MAX_ITEMS = 10_000  # per request; the body limit (max_body_bytes) applies too
MAX_FILES = 1_000
INLINE_ITEMS = 64  # more items (or any image) are validated in the thread pool
MAX_IDEMPOTENCY_KEY = 200
ITEM_FORMS = '{"data": row}, {"inputs": {name: value}} or {"image": base64}'
FORMS = '"data": rows, "inputs": {name: rows}, "images": [base64, ...] or "items": [{...}, ...]'

FORM_KEYS = ("data", "inputs", "images", "image_data", "items")
ITEMS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "model (here or ?model=) and exactly one of data, inputs, images, "
                "image_data, items",
                "oneOf": [
                    {"required": [k], "not": {"anyOf": [{"required": [o]} for o in FORM_KEYS if o != k]}}
                    for k in FORM_KEYS
                ],
                "properties": {
                    "model": {"type": "string", "minLength": 1},
                    "data": {"type": "array", "minItems": 1, "items": {}},
                    "inputs": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"type": "array", "items": {}},
                    },
                    "images": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_ITEMS,
                        "items": {"type": "string", "format": "byte"},
                    },
                    "image_data": {"type": "string", "format": "byte"},
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_ITEMS,
                        "items": {
                            "type": "object",
                            "anyOf": [{"required": [k]} for k in ("data", "inputs", "image", "image_data")],
                            "properties": {
                                "data": {"type": "array", "items": {}},
                                "inputs": {"type": "object"},
                                "image": {"type": "string", "format": "byte"},
                                "image_data": {"type": "string", "format": "byte"},
                            },
                        },
                    },
                },
            }
        },
        "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": multipart_files("files", MAX_FILES, "model")},
    },
}

REGISTER: Responses = {200: {"description": "A replay of an earlier request with the same Idempotency-Key"}}
REGISTER |= errors(404, 409, 422, 503)
StatusFilter = Literal["pending", "running", "done", "failed", "predicted", "unpredicted"]  # FILTERS
Raw = tuple[str, dict[str, Any] | bytes]  # (where, named tensors of one item | image bytes)
Stored = list[tuple[PayloadKind, bytes]]


# -- reading the body ------------------------------------------------------------------
def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput('name the model: {"model": "iris", ...} or ?model=iris')
    return value


def _manifest(gw: Gateway, name: str) -> Manifest:
    """The active version's manifest, read from the store (the gateway need not load the model)."""
    return gw.engine.store.manifest(name, gw.engine.active_version(name))


def _one_input(manifest: Manifest, what: str) -> str:
    if len(manifest.inputs) != 1:
        raise InvalidInput(f'{manifest.name} has several inputs; name them with "inputs" instead of {what}')
    return manifest.inputs[0].name


def _item(manifest: Manifest, i: int, item: Any) -> Raw:
    where = f"items[{i}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object: {ITEM_FORMS}")
    for key in ("image", "image_data"):
        if key in item:
            return where, b64_image(item[key], f"{where}.{key}")
    if "inputs" in item:
        if not isinstance(item["inputs"], dict):
            raise InvalidInput(f"{where}.inputs must map input names to arrays")
        return where, dict(item["inputs"])
    if "data" in item:
        return where, {_one_input(manifest, f"{where}.data"): item["data"]}
    raise InvalidInput(f"{where} must be one of {ITEM_FORMS}")


def _bulk(manifest: Manifest, doc: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Raw]]:
    """JSON forms -> (tensors of N rows, or None) and per-item raws."""
    forms = [k for k in FORM_KEYS if k in doc]
    if len(forms) != 1:
        raise InvalidInput(f"send exactly one of {FORMS}" + (f"; got {forms}" if forms else ""))
    form, value = forms[0], doc[forms[0]]
    if form == "data":
        return {_one_input(manifest, '"data"'): value}, []
    if form == "inputs":
        if not isinstance(value, dict):
            raise InvalidInput('"inputs" must map input names to arrays of rows')
        return dict(value), []
    if form == "image_data":
        return None, [("image_data", b64_image(value, "image_data"))]
    if not isinstance(value, list) or not value:
        raise InvalidInput(f'"{form}" must be a non-empty list')
    if len(value) > MAX_ITEMS:
        raise InvalidInput(f"{len(value)} items is over the limit of {MAX_ITEMS} per request; split them")
    if form == "images":
        return None, [(f"images[{i}]", b64_image(v, f"images[{i}]")) for i, v in enumerate(value)]
    return None, [_item(manifest, i, v) for i, v in enumerate(value)]


async def _read(
    gw: Gateway, request: Request, model: str | None
) -> tuple[Manifest, dict[str, Any] | None, list[Raw]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        files, texts = await form_files(request, "files", max_files=MAX_FILES, text_fields=("model",))
        manifest = _manifest(gw, _model_name(texts.get("model") or model))
        return manifest, None, [(f"files[{i}] ({f.filename})", await f.read()) for i, f in enumerate(files)]
    body = await request.body()
    if ctype in IMAGE_TYPES or ctype in NPY_TYPES:
        manifest = _manifest(gw, _model_name(model))
        if ctype in IMAGE_TYPES:
            return manifest, None, [("body", body)]
        return manifest, {_one_input(manifest, "a .npy body"): npy_array(body)}, []
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidInput(f'expected a JSON object: {{"model": "iris", ...}} with {FORMS}')
    manifest = _manifest(gw, _model_name(doc.get("model", model)))
    tensors, raws = _bulk(manifest, doc)
    return manifest, tensors, raws


# -- validation ------------------------------------------------------------------------
def _checked(engine: Engine, manifest: Manifest, raws: list[Raw]) -> Stored:
    """Every item as the batch role will see it; the first bad one raises, naming itself."""
    out: Stored = []
    for where, raw in raws:
        try:
            if isinstance(raw, bytes):
                engine.prepare_images(manifest, [raw])  # decoded and transformed once, then dropped
                out.append(("images", raw))
                continue
            arrays = validate(manifest, raw, engine.options.max_rows)
            rows = next(iter(arrays.values())).shape[0]
            if rows != 1:
                raise InvalidInput(
                    f"holds {rows} rows; an item is one sample (rows under a top-level "
                    '"data" become one item each)'
                )
            out.append(("tensors", encode_rows(arrays)[0]))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.message}", item=where, **exc.details) from None
    return out


async def _payloads(gw: Gateway, request: Request, model: str | None) -> tuple[str, Stored]:
    manifest, tensors, raws = await _read(gw, request, model)
    if tensors is not None:
        arrays = validate(manifest, tensors, MAX_ITEMS)
        return manifest.name, [("tensors", p) for p in encode_rows(arrays)]
    if len(raws) > INLINE_ITEMS or any(isinstance(raw, bytes) for _, raw in raws):  # off the event loop
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(gw.service.executor, _checked, gw.engine, manifest, raws)
    else:
        items = _checked(gw.engine, manifest, raws)
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"{len(items)} items is over the limit of {MAX_ITEMS} per request; split them")
    return manifest.name, items


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def _doorbell(request: Request) -> Doorbell:
    state = request.app.state
    bell: Doorbell | None = getattr(state, "batch_doorbell", None)
    if bell is None:
        bell = state.batch_doorbell = batch_doorbell(gateway(request).config.data_dir)
    return bell


def _statuses(status: str | None) -> tuple[str, ...] | None:
    if status is None:
        return None
    if status not in FILTERS:
        raise InvalidInput(f"unknown status {status!r}; use one of {', '.join(FILTERS)}")
    return FILTERS[status]


# -- routes ----------------------------------------------------------------------------
@router.post(
    "/items",
    status_code=201,
    summary="Register items for the batch role: validated, then stored all or none",
    openapi_extra={"requestBody": ITEMS_BODY},
    responses=REGISTER,
)
async def register(request: Request, model: str | None = None) -> Response:
    gw = gateway(request)
    key = _idempotency_key(request)
    name, items = await _payloads(gw, request, model)
    ids, replayed = await asyncio.to_thread(BatchItems(gw.storage).register, name, items, key)
    return json_response(
        {"model": name, "count": len(ids), "ids": ids, "replayed": replayed},
        status=200 if replayed else 201,
    )


@router.get("/items", summary="Items with their status, and results once predicted")
async def list_items(
    request: Request,
    status: StatusFilter | None = None,
    model: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> Response:
    statuses = _statuses(status)
    items = BatchItems(gateway(request).storage)

    def read() -> tuple[list[dict[str, Any]], int]:
        found = items.list_items(statuses=statuses, model=model, limit=limit, offset=offset)
        return [i.to_dict() for i in found], items.count(statuses=statuses, model=model)

    found, total = await asyncio.to_thread(read)
    return json_response({"items": found, "total": total, "limit": limit, "offset": offset})


@router.get(
    "/items/{item_id}",
    summary="One item: status, attempts, error, result and model version",
    responses=errors(404),
)
async def get_item(item_id: str, request: Request) -> Response:
    item = await asyncio.to_thread(BatchItems(gateway(request).storage).get, item_id)
    return json_response(item.to_dict())


@router.get("", summary="How many items are pending, running, done and failed; the role's schedule")
async def summary(request: Request, model: str | None = None) -> Response:
    gw = gateway(request)
    counts = await asyncio.to_thread(BatchItems(gw.storage).counts, model)
    try:
        schedule = str(schedule_from_config(gw.config.batch))
    except ConfigError as exc:
        schedule = f"invalid: {exc.problems[0]}"
    return json_response(
        {
            "counts": counts,
            "schedule": schedule,
            "parallelism": gw.config.batch.parallelism,
            "chunk": gw.config.batch.chunk,
        }
    )


@router.post(
    "/run",
    status_code=202,
    summary="Ask the batch role to run the pending items now",
    description="The request is recorded in the device database, then the role's doorbell rings: "
    "a role that is starting or restarting runs as soon as it listens. `listeners` says how many "
    "roles were woken; 0 comes with a `warning`.",
    responses=errors(503, 507),
)
async def run_now(request: Request) -> Response:
    gw = gateway(request)
    items = BatchItems(gw.storage)
    await asyncio.wrap_future(gw.storage.submit(items.request_run, "batch run request"))
    pending = await asyncio.to_thread(items.count, statuses=("pending",))
    listeners = await asyncio.to_thread(_doorbell(request).ring)
    body: dict[str, Any] = {"pending": pending, "listeners": listeners}
    if not listeners:
        body["warning"] = (
            "no batch role is listening now: the request is kept and the role runs the items when "
            "it starts (without a batch role, run them with: edge-agent batch --now)"
        )
    return json_response(body, status=202)
