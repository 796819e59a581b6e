"""Calibration and evaluation sets for model tools: files -> validated model inputs (+ labels).

Accepted forms (``PATH`` is a file or a directory):

- ``.npz``: one array per model input, named after the input (a single-input model also
  takes ``x``); optional ``labels`` (or ``y``): class indexes or label names.
- ``.npy``: one array, for a single-input model; no labels.
- ``.json``: ``{"inputs": {name: rows}, "labels": [...]}``, ``{"data": rows, "labels": [...]}``
  or a bare array of rows.
- a directory of images (``.jpg .jpeg .png .bmp``), decoded and transformed by the model's own
  ``preprocessing``; images in sub-directories named after labels are labelled by them.

Rows are checked against the manifest (shape, dtype, NaN) exactly as a prediction request
is: a set that does not fit the model is refused with the reason, before anything runs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.runtime.imageio import DEFAULT_MAX_PIXELS
from edge_agent.runtime.inputs import validate
from edge_agent.runtime.package import Manifest

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
MAX_ROWS = 100_000
LABEL_KEYS = ("labels", "y")


@dataclass(frozen=True, slots=True)
class EvalSet:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None  # int class indexes, one per row
    description: str

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}


def load_set(path: Path, manifest: Manifest, what: str = "calibration set") -> EvalSet:
    """Read ``path`` as rows for ``manifest``'s model; InvalidInput naming the problem otherwise."""
    if path.is_dir():
        inputs, labels = _from_images(path, manifest, what)
    elif not path.is_file():
        raise InvalidInput(f"{what} {path} does not exist")
    else:
        suffix = path.suffix.lower()
        raw = _read(path, what)
        if suffix == ".npz":
            inputs, labels = _from_npz(raw, path, manifest, what)
        elif suffix == ".npy":
            inputs, labels = {_single(manifest, what): _npy(raw, path, what)}, None
        elif suffix == ".json":
            inputs, labels = _from_json(raw, path, manifest, what)
        else:
            raise InvalidInput(f"{what} {path.name}: use a .npz, .npy or .json file or a directory of images")
    _not_empty(inputs, path, what)
    try:
        checked = validate(manifest, inputs, MAX_ROWS)
    except InvalidInput as exc:
        raise InvalidInput(f"{what} {path} does not fit {manifest.name}: {exc.message}") from None
    n = int(next(iter(checked.values())).shape[0])
    label_idx = None if labels is None else _label_indexes(labels, n, manifest, path, what)
    desc = f"{path.name}: {n} rows" + (" with labels" if label_idx is not None else "")
    return EvalSet(checked, label_idx, desc)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None


def _single(manifest: Manifest, what: str) -> str:
    if len(manifest.inputs) != 1:
        names = [t.name for t in manifest.inputs]
        raise InvalidInput(f"{manifest.name} has inputs {names}: give the {what} as .npz or JSON with names")
    return manifest.inputs[0].name


def _npy(raw: bytes, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(np.load(io.BytesIO(raw), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{what} {path.name} is not a valid .npy array: {exc}") from None


def _from_npz(
    raw: bytes, path: Path, manifest: Manifest, what: str
) -> tuple[dict[str, Any], np.ndarray | None]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{what} {path.name} is not a valid .npz archive: {exc}") from None
    names = [t.name for t in manifest.inputs]
    if len(names) == 1 and names[0] not in arrays and "x" in arrays:
        arrays[names[0]] = arrays.pop("x")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InvalidInput(
            f"{what} {path.name} has arrays {sorted(arrays)} but no {missing}: name the arrays after "
            f"{manifest.name}'s inputs {names} (or `x` for a single input), labels as `labels`"
        )
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    return {n: arrays[n] for n in names}, labels


def _from_json(
    raw: bytes, path: Path, manifest: Manifest, what: str
) -> tuple[dict[str, Any], np.ndarray | None]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} {path.name} is not valid JSON: {exc}") from None
    labels = None
    if isinstance(doc, dict):
        found = [doc[k] for k in LABEL_KEYS if k in doc]
        labels = np.asarray(found[0]) if found else None
        if isinstance(doc.get("inputs"), dict):
            return dict(doc["inputs"]), labels
        if "data" in doc:
            return {_single(manifest, what): doc["data"]}, labels
        raise InvalidInput(
            f'{what} {path.name}: expected {{"inputs": {{...}}}}, {{"data": [...]}} or an array'
        )
    if isinstance(doc, list):
        return {_single(manifest, what): doc}, None
    raise InvalidInput(f"{what} {path.name}: expected a JSON object or array")


def _from_images(path: Path, manifest: Manifest, what: str) -> tuple[dict[str, Any], np.ndarray | None]:
    from edge_agent.runtime.preprocess import preprocess

    spec = manifest.preprocessing
    if spec is None:
        raise InvalidInput(
            f"{manifest.name} takes tensors, not images: give the {what} as .npz, .npy or JSON"
        )
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInput(f"{what} {path} holds no images (.jpg .jpeg .png .bmp): nothing to run")
    tensors, labels = [], []
    for f in files:
        try:
            tensor, _ = preprocess(_read(f, what), spec, DEFAULT_MAX_PIXELS)
        except InvalidInput as exc:
            raise InvalidInput(f"{what} image {f}: {exc.message}") from None
        tensors.append(tensor)
        labels.append(f.parent.name if f.parent != path else None)
    given = [lab for lab in labels if lab is not None]
    if given and len(given) != len(labels):
        raise InvalidInput(f"{what} {path}: put every image in a label sub-directory, or none")
    return {spec.input: np.stack(tensors)}, (np.asarray(given) if given else None)


def _not_empty(inputs: dict[str, Any], path: Path, what: str) -> None:
    for name, value in inputs.items():
        if isinstance(value, list | np.ndarray) and len(value) == 0:
            raise InvalidInput(f"{what} {path} is empty (input {name!r} has no rows): nothing to run")


def _label_indexes(labels: np.ndarray, n: int, manifest: Manifest, path: Path, what: str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise InvalidInput(f"{what} {path.name} has {n} rows but {len(labels)} labels")
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    names = {name: i for i, name in enumerate(manifest.labels)}
    unknown = sorted({str(lab) for lab in labels} - set(names))
    if unknown:
        raise InvalidInput(f"{what} {path.name}: labels {unknown[:5]} are not among {manifest.name}'s labels")
    return np.asarray([names[str(lab)] for lab in labels], dtype=np.int64)
