"""Shared fixtures: real model packages copied into temporary stores."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime.engine import Engine

# Tests that import onnxruntime themselves do it as the agent does: telemetry off (see load_ort).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
from edge_agent.runtime.store import ModelStore
from tests.pgserver import PgServer, run_postgres

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


# -- the cloud database: every cloud test runs on SQLite and on a real PostgreSQL ----------------
class PgUrl(str):
    """A PostgreSQL database URL, with the directory the cloud keeps its other files in."""

    state_dir: Path


CloudDb = Path | PgUrl


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """The cloud store's backend; tests that use it run once per backend."""
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session (fails, never skips, when the package is missing)."""
    with run_postgres() as server:
        yield server


def make_cloud_db(request: pytest.FixtureRequest, backend: str, directory: Path) -> CloudDb:
    """A fresh, empty cloud database: an SQLite file in ``directory``, or a new PostgreSQL database."""
    if backend == "sqlite":
        return directory / "cloud.sqlite3"
    server: PgServer = request.getfixturevalue("pg_server")
    url = PgUrl(server.create_database())
    url.state_dir = directory
    return url


@pytest.fixture
def cloud_db(request: pytest.FixtureRequest, db_backend: str, tmp_path: Path) -> CloudDb:
    return make_cloud_db(request, db_backend, tmp_path)
