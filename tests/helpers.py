"""Test helpers that build real model packages from model files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime.package import Golden, Manifest, save_golden, sha256_file, write_manifest


def make_package(
    root: Path,
    name: str,
    version: str,
    model_file: Path,
    golden_in: dict[str, np.ndarray],
    golden_out: dict[str, np.ndarray],
    atol: float,
    **fields: Any,
) -> Path:
    pkg = root / name / version
    pkg.mkdir(parents=True)
    shutil.copy(model_file, pkg / ("model" + model_file.suffix))
    digest = save_golden(pkg, golden_in, golden_out)
    manifest = Manifest(
        name=name,
        version=version,
        file="model" + model_file.suffix,
        sha256=sha256_file(pkg / ("model" + model_file.suffix)),
        golden=Golden(sha256=digest, atol=atol, tolerance_reason="test package"),
        **fields,
    )
    write_manifest(pkg, manifest)
    return pkg


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
