"""What the store's callers pass and get back: queries, pages, cursors, row decoding."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from cloud_sync.errors import InvalidRequest, Rejected

JSON_COLUMNS = frozenset(
    {
        "models",
        "reported_models",
        "last_update",
        "metrics",
        "body",
        "args",
        "result",
        "manifest",
        "devices",
        "figures",
        "shadow",
        "doc",
    }
)


# -- pages -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResultQuery:
    device: str | None = None
    model: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0
    cursor: str | None = None
    newest_first: bool = True


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created: float, result_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, result_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, result_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidRequest("invalid cursor: pass back the next_cursor of a previous page") from None
    if not isinstance(created, int | float) or not isinstance(result_id, str):
        raise InvalidRequest("invalid cursor: pass back the next_cursor of a previous page")
    return float(created), result_id


def result_label(body: dict[str, Any]) -> str | None:
    """The primary label of a result: ``body.label``, else that of its first prediction or box."""
    label = body.get("label")
    if isinstance(label, str):
        return label
    for key in ("predictions", "boxes"):
        items = body.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            first = items[0].get("label")
            if isinstance(first, str):
                return first
    return None


def dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise Rejected(f"{what} holds a non-finite number (NaN or Infinity)") from None
    except RecursionError:
        raise Rejected(f"{what} is nested too deeply") from None


def finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise Rejected(f"{what} is not a finite number")
    return value


def text(value: str | None, what: str) -> str | None:
    """A text column's value; one holding a NUL character is refused on both databases (PostgreSQL
    cannot store it), so a device gets the same answer whichever the cloud runs on."""
    if value is not None and "\x00" in value:
        raise Rejected(f"{what} holds a NUL character")
    return value


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in row.items()}
    if "online" in out and out["online"] is not None:
        out["online"] = bool(out["online"])
    return out
