"""Gateway processes shared by the serving tests (one per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS, copy_models
from tests.helpers import make_book_store
from tests.serving.gateway_proc import Gateway, run_gateway

SERVED = ["iris", "iris_setosa", "iris_versicolor", "iris_virginica", "digits_int8", "digits", "face"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The bundled models (a copy) behind a real gateway process; book models too."""
    tmp = tmp_path_factory.mktemp("gw")
    root = copy_models(tmp / "models", [n for n in SERVED if (MODELS / n).is_dir()])
    make_book_store(root)
    with run_gateway(root, tmp / "data", env={"EDGE_DEFAULT_MODEL": "book_iris"}) as gw:
        yield gw


@pytest.fixture(scope="module")
def models_root(gateway: Gateway) -> Path:
    return Path(gateway.log).parent.parent / "models"
