"""What the OpenAPI document says about answers that are not the route's own.

Routes declare the errors their handlers raise with ``responses=errors(404, 422)``. What the
middleware answers before a route runs is added to the document in one place,
:func:`finish_schema`: 413 (body over the limit) and 400 (unreadable body) on every operation
that takes a body, 401 and the bearer security scheme on every non-public operation when a token
is configured. Error bodies are the JSON ``{"error", "code", "details"?}`` every handler writes,
and a 405 names every method the path has (:func:`allowed_methods`), not only the first route's.
The cloud API (``cloud_sync.api``) uses the same helpers, so both documents read alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, in words a person can act on."},
        "code": {"type": "string", "description": "Stable machine-readable name of the error."},
        "details": {"type": "object", "description": "Structured fields of the error, when it has any."},
    },
}
DESCRIPTIONS = {
    400: "Unreadable request (malformed multipart body, invalid Content-Length)",
    401: "Missing or wrong credentials",
    403: "Forbidden (missing CSRF token, foreign origin)",
    404: "No such resource (model, version, job, item)",
    409: "Conflicts with the current state",
    413: "Request body over the configured limit",
    415: "Unsupported media type",
    422: "Well-formed request that does not fit (shape, dtype, image, parameter out of range)",
    429: "Too many attempts; retry after the Retry-After header's seconds",
    503: "Not available now (model not loaded, service or broker down); retry later",
    504: "An upstream service did not answer in time",
    507: "The device's disk is full: nothing was stored; retry once there is room",
}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
Responses = dict[int | str, dict[str, Any]]
JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def errors(*statuses: int) -> Responses:
    """``responses=`` for a route: each status with the JSON error body."""
    return {s: {"description": DESCRIPTIONS[s], "content": JSON_ERROR} for s in statuses}


def no_content(description: str) -> dict[str, Any]:
    """A response with an empty body (no media type)."""
    return {"description": description, "content": {}}


def multipart_files(field: str, max_files: int, *text_fields: str) -> dict[str, Any]:
    """The schema of a multipart body of files under ``field`` (and optional text fields), as
    :func:`edge_agent.serving.codec.form_files` reads it."""
    files: dict[str, Any] = {"type": "string", "format": "binary"}
    if max_files > 1:
        files = {"type": "array", "minItems": 1, "maxItems": max_files, "items": files}
    return {
        "type": "object",
        "required": [field],
        "additionalProperties": False,
        "properties": {field: files, **{t: {"type": "string", "minLength": 1} for t in text_fields}},
    }


def allowed_methods(doc: dict[str, Any], path: str) -> list[str]:
    """Every method the document lists for ``path`` (for the ``Allow`` header of a 405), plus
    HEAD wherever GET is (Starlette answers HEAD for every GET route)."""
    methods: set[str] = set()
    for template, item in doc.get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {m.upper() for m in item if m in HTTP_METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def finish_schema(
    make: Callable[[], dict[str, Any]],
    *,
    public: Callable[[str], bool],
    bearer: bool,
    cookie: str | None = None,
) -> Callable[[], dict[str, Any]]:
    """Wrap FastAPI's ``app.openapi``: the middleware's answers, the error schema, security.

    ``public(path)`` says which paths need no login; ``bearer`` whether a bearer token is
    required; ``cookie`` the name of a session cookie that is accepted too (None: none is).
    """
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if cache:
            return cache
        doc = make()
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemes: dict[str, Any] = {}
        if bearer:
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        if cookie is not None:
            schemes["session"] = {"type": "apiKey", "in": "cookie", "name": cookie}
        if schemes:
            components["securitySchemes"] = schemes
        for path, item in doc.get("paths", {}).items():
            for op in item.values():
                responses = op.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = errors(422)[422]
                if "requestBody" in op:
                    responses.update({str(k): v for k, v in errors(400, 413).items()})
                if schemes and not public(path):
                    op["security"] = [{name: []} for name in schemes]
                    responses.update({str(k): v for k, v in errors(401).items()})
        cache.update(doc)
        return cache

    return openapi
