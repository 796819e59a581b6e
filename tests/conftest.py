"""Shared fixtures: real model packages copied into temporary stores."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DATA = Path(__file__).resolve().parent / "data"


def bundled_models() -> list[str]:
    return ModelStore(MODELS, Path("/nonexistent/state.json")).names()


def copy_models(dest: Path, names: list[str]) -> Path:
    for name in names:
        shutil.copytree(MODELS / name, dest / name)
    return dest


@pytest.fixture
def make_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(*names: str) -> ModelStore:
        root = copy_models(tmp_path / "models", list(names))
        return ModelStore(root, tmp_path / "state" / "store-state.json")

    return make


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine over the bundled store (read-only use; state in tmp)."""
    eng = Engine(ModelStore(MODELS, tmp_path / "store-state.json"))
    yield eng
    eng.close()
