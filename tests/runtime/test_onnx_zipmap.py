"""The ZipMap taken off skl2onnx classifiers at load: the same tensors, bit for bit, as converting
onnxruntime's ``{class: probability}`` maps; a ZipMap it cannot take off is still converted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edge_agent.runtime.backends._zipmap import without_zipmap
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from tests.conftest import ROOT
from tests.runtime.onnx_builders import _save

IRIS = ["iris", "iris_setosa", "iris_versicolor", "iris_virginica"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(ModelStore(ROOT / "models", tmp_path_factory.mktemp("state") / "s.json"))


@pytest.mark.parametrize("name", IRIS)
def test_bundled_classifiers_lose_their_zipmap_and_keep_their_answers(engine: Engine, name: str) -> None:
    model = engine.model(name)
    assert model.metadata()["zipmap_removed"] == {"output_probability": "probabilities"}
    path = engine.store.package_dir(name, model.manifest.version) / model.manifest.file
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).uniform(0.0, 8.0, size=(300, 4)).astype(np.float32)
    label, maps = plain.run(["output_label", "output_probability"], {"float_input": x})
    want = np.array([[row[k] for k in sorted(row)] for row in maps], dtype=np.float32)
    for rows in (1, 32, 300):
        got = model.infer({"float_input": x[:rows]})
        assert got["output_probability"].dtype == np.float32
        assert got["output_probability"].view(np.uint32).tolist() == want[:rows].view(np.uint32).tolist()
        np.testing.assert_array_equal(got["output_label"], label[:rows])


def _zipmap_model(path: Path, labels: list[int]) -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["probabilities"]),
            helper.make_node(
                "ZipMap", ["probabilities"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=labels
            ),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(labels)])],
        [
            helper.make_value_info(
                "probs",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                    )
                ),
            )
        ],
    )
    return _save(graph, path, domains=("ai.onnx.ml",)).read_bytes()


def test_sorted_labels_are_taken_off_and_run(tmp_path: Path) -> None:
    stripped = without_zipmap(_zipmap_model(tmp_path / "m.onnx", [0, 1, 5]), {"probs"})
    assert stripped is not None
    data, fetch = stripped
    assert fetch == {"probs": "probabilities"}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(["probabilities"], {"x": x})[0], x)


def test_unsorted_labels_unknown_outputs_and_garbage_are_left_alone(tmp_path: Path) -> None:
    model = _zipmap_model(tmp_path / "m.onnx", [2, 0, 1])  # columns would not be in key order
    assert without_zipmap(model, {"probs"}) is None
    assert without_zipmap(_zipmap_model(tmp_path / "n.onnx", [0, 1]), {"other"}) is None
    assert without_zipmap(model[: len(model) // 2], {"probs"}) is None
    assert without_zipmap(b"\xff" * 40, {"probs"}) is None
