"""Read a prediction input from a file: an image, a JSON array or a .npy.

Shared by the offline CLI and the demo. JSON may be a bare (nested) list, the
book's ``{"data": [[...]]}``, or ``{"inputs": {"name": [...]}}``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.runtime.package import Manifest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def parse_json_inputs(doc: Any, manifest: Manifest) -> dict[str, Any]:
    if isinstance(doc, dict) and "inputs" in doc:
        named = doc["inputs"]
        if not isinstance(named, dict):
            raise InvalidInput('"inputs" must map input names to arrays')
        return dict(named)
    data = doc["data"] if isinstance(doc, dict) and "data" in doc else doc
    if isinstance(data, dict) or not isinstance(data, list):
        raise InvalidInput('expected a JSON array, {"data": [...]} or {"inputs": {name: [...]}}')
    if len(manifest.inputs) != 1:
        raise InvalidInput(f'{manifest.name} has several inputs; name them with {{"inputs": {{...}}}}')
    return {manifest.inputs[0].name: data}


def parse_npy(raw: bytes, manifest: Manifest) -> dict[str, Any]:
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"not a valid .npy array: {exc}") from None
    if len(manifest.inputs) != 1:
        raise InvalidInput(f"{manifest.name} has several inputs; a .npy file feeds single-input models")
    return {manifest.inputs[0].name: arr}


def read_input_file(path: Path, manifest: Manifest) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    """(tensors, None) or (None, [image bytes])."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None, [raw]
    if suffix == ".npy":
        return parse_npy(raw, manifest), None
    if suffix == ".json":
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path.name} is not valid JSON: {exc}") from None
        return parse_json_inputs(doc, manifest), None
    raise InvalidInput(f"{path.name}: unknown input kind; use an image (.jpg .png .bmp), .json or .npy")
