"""The fixtures the cloud test modules share, one set per module and database backend: a work
directory, a real mosquitto, a fresh cloud database and the ingest role over both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud import Role, running, start_ingest
from tests.conftest import CloudDb, make_cloud_db
from tests.sync.broker import Broker, run_broker


def _short_name(request: pytest.FixtureRequest) -> str:
    """``tests.cloud.test_api`` -> ``api``: names the module's directory and its ingest role."""
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def workdir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, db_backend: str
) -> Path:
    return tmp_path_factory.mktemp(f"{_short_name(request)}-{db_backend}")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[Broker]:
    with run_broker(workdir / "broker") as b:
        yield b


@pytest.fixture(scope="module")
def db(request: pytest.FixtureRequest, db_backend: str, workdir: Path) -> CloudDb:
    return make_cloud_db(request, db_backend, workdir)


@pytest.fixture(scope="module")
def ingest(request: pytest.FixtureRequest, broker: Broker, db: CloudDb, workdir: Path) -> Iterator[Role]:
    """The ingest role, client id ``ingest-<module>`` (``ingest-api`` for test_api.py)."""
    with running(start_ingest(broker, db, workdir, f"ingest-{_short_name(request)}")) as role:
        yield role
