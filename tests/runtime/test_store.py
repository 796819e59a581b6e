"""Versioned store: verify, atomic activation guarded by the self-test, rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import IntegrityError, ModelNotFound, PackageError, SelfTestFailed, VersionNotFound
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import read_manifest, save_golden, write_manifest
from edge_agent.runtime.store import ModelStore, version_key
from tests.helpers import flip_byte

ROW = [[5.1, 3.5, 1.4, 0.2]]


def _add_version(store: ModelStore, name: str, src: str, new: str) -> Path:
    dest = store.root / name / new
    shutil.copytree(store.root / name / src, dest)
    m = read_manifest(dest)
    write_manifest(dest, m.model_copy(update={"version": new}))
    return dest


def test_version_order_is_natural() -> None:
    assert sorted(["10", "2", "1.10", "1.2"], key=version_key) == ["1.2", "1.10", "2", "10"]


def test_verify_passes_on_shipped_package(make_store) -> None:
    store = make_store("iris")
    assert store.verify("iris").sha256 == read_manifest(store.root / "iris" / "1").sha256


def test_one_changed_byte_fails_verify_and_load(make_store) -> None:
    store = make_store("iris")
    flip_byte(store.root / "iris" / "1" / "model.onnx")
    with pytest.raises(IntegrityError, match=r"sha256.*tampered"):
        store.verify("iris", "1")
    engine = Engine(store)
    with pytest.raises(IntegrityError):
        engine.predict("iris", {"float_input": ROW})


def test_tampered_new_version_is_refused_and_old_keeps_serving(make_store) -> None:
    store = make_store("iris")
    engine = Engine(store)
    engine.activate("iris", "1")
    before = engine.predict("iris", {"float_input": ROW})
    pkg = _add_version(store, "iris", "1", "2")
    flip_byte(pkg / "model.onnx")
    with pytest.raises(IntegrityError):
        engine.activate("iris", "2")
    after = engine.predict("iris", {"float_input": ROW})
    assert after.version == "1"
    np.testing.assert_array_equal(after.outputs["output_probability"], before.outputs["output_probability"])
    assert json.loads(store.state_path.read_text())["iris"]["active"] == "1"
    # a fresh process picks the same: the pointer on disk never moved
    assert Engine(store).predict("iris", {"float_input": ROW}).version == "1"


def test_failed_self_test_is_never_activated(make_store) -> None:
    store = make_store("iris")
    engine = Engine(store)
    engine.activate("iris", "1")
    pkg = _add_version(store, "iris", "1", "2")
    # a golden sample the model cannot reproduce: expected outputs shifted by 0.5
    with np.load(pkg / "golden.npz") as g:
        arrays = {k: g[k] for k in g.files}
    inputs = {k.removeprefix("input."): v for k, v in arrays.items() if k.startswith("input.")}
    outputs = {"output_probability": arrays["output.output_probability"] + 0.5}
    digest = save_golden(pkg, inputs, outputs)
    m = read_manifest(pkg)
    write_manifest(pkg, m.model_copy(update={"golden": m.golden.model_copy(update={"sha256": digest})}))
    with pytest.raises(SelfTestFailed, match="golden self-test"):
        engine.activate("iris", "2")
    assert engine.predict("iris", {"float_input": ROW}).version == "1"


def test_activate_and_rollback(make_store) -> None:
    store = make_store("iris")
    _add_version(store, "iris", "1", "2")
    engine = Engine(store)
    assert engine.predict("iris", {"float_input": ROW}).version == "2"  # newest by default
    engine.activate("iris", "1")
    assert engine.predict("iris", {"float_input": ROW}).version == "1"
    engine.activate("iris", "2")
    assert engine.rollback("iris") == "1"
    assert engine.predict("iris", {"float_input": ROW}).version == "1"
    assert Engine(store).predict("iris", {"float_input": ROW}).version == "1"


def test_rollback_without_history_is_a_clear_error(make_store) -> None:
    engine = Engine(make_store("iris"))
    with pytest.raises(VersionNotFound, match="no earlier version"):
        engine.rollback("iris")


def test_startup_falls_back_when_active_version_is_corrupt(make_store) -> None:
    store = make_store("iris")
    _add_version(store, "iris", "1", "2")
    Engine(store).activate("iris", "1")
    Engine(store).activate("iris", "2")
    flip_byte(store.root / "iris" / "2" / "model.onnx")  # corrupted on disk while off
    engine = Engine(store)
    assert engine.predict("iris", {"float_input": ROW}).version == "1"
    assert "refused" in (engine.load_errors.get("iris") or "")


def test_unknown_model_and_version(make_store) -> None:
    engine = Engine(make_store("iris"))
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        engine.predict("nope", {"x": [1]})
    with pytest.raises(VersionNotFound, match="no version '9'"):
        engine.predict("iris", {"float_input": ROW}, version="9")


def test_install_copies_package_beside_current(make_store, tmp_path: Path) -> None:
    store = make_store("iris")
    src = tmp_path / "incoming"
    shutil.copytree(store.root / "iris" / "1", src)
    m = read_manifest(src)
    write_manifest(src, m.model_copy(update={"version": "3"}))
    store.install(src)
    assert store.versions("iris") == ["1", "3"]
    with pytest.raises(PackageError, match="already installed"):
        store.install(src)
    flip_byte(src / "model.onnx")
    write_manifest(src, m.model_copy(update={"version": "4"}))
    with pytest.raises(IntegrityError):
        store.install(src)
    assert store.versions("iris") == ["1", "3"]


def test_corrupt_state_file_falls_back_to_newest(make_store) -> None:
    store = make_store("iris")
    store.state_path.parent.mkdir(parents=True, exist_ok=True)
    store.state_path.write_text("{not json")
    assert store.active_version("iris") == "1"


def test_serving_engine_follows_a_version_activated_by_another_process(make_store) -> None:
    import time

    store = make_store("iris")
    _add_version(store, "iris", "1", "2")
    serving = Engine(store)
    serving.activate("iris", "1")
    assert serving.predict("iris", {"float_input": ROW}).version == "1"
    other = Engine(ModelStore(store.root, store.state_path))  # e.g. the sync role applying an update
    other.activate("iris", "2")
    time.sleep(1.1)  # the serving engine looks at most once a second
    assert serving.predict("iris", {"float_input": ROW}).version == "2"
    # a version corrupted on disk and then activated elsewhere is refused; the current one keeps serving
    pkg = _add_version(store, "iris", "1", "3")
    flip_byte(pkg / "model.onnx")
    store.set_active("iris", "3")  # forced, as a broken tool might
    time.sleep(1.1)
    assert serving.predict("iris", {"float_input": ROW}).version == "2"
    assert "tampered" in (serving.load_errors.get("iris") or "")
