"""The importer's decisions, through its library API on real model files: quantization read
from TFLite, tolerance from the output type, softmax decided from the outputs, golden origin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ImportRejected
from edge_agent.runtime.import_options import DecoderOptions, ImageOptions, ImportOptions
from edge_agent.runtime.importer import prepare, write_package
from edge_agent.runtime.package import read_manifest, verify_files
from tests.conftest import DATA, MODELS


def test_tflite_int8_quantization_and_tolerance() -> None:
    bundled = read_manifest(MODELS / "digits_tflite_int8" / "1")
    path = MODELS / "digits_tflite_int8" / "1" / bundled.file
    prep = prepare(path, ImportOptions(name="d8", postprocess="classification"))
    m = prep.manifest
    assert m.backend == "litert"
    assert m.inputs[0].dtype == "float32" and m.inputs[0].shape == [None, 1, 8, 8]  # dequantized view
    assert m.quantization.scheme == "int8_full_integer"
    assert m.quantization.tensors == bundled.quantization.tensors  # scale and zero point from the file
    out_scale = bundled.quantization.tensors["logits"].scale
    assert m.golden.atol == pytest.approx(1.5 * out_scale, rel=1e-6)
    assert "int8 quantized" in m.golden.tolerance_reason
    assert m.postprocessing is not None and m.postprocessing.apply_softmax  # type: ignore[union-attr]
    assert m.batching.enabled  # the TFLite file's batch dim is -1
    assert m.golden.origin.startswith("seeded inputs: 2 row(s)")


def test_npy_and_json_samples_make_the_golden(tmp_path: Path) -> None:
    heldout = np.load(DATA / "digits_heldout.npz")
    x = heldout["images"][:3].astype(np.float32)[:, None] / 16.0
    np.save(tmp_path / "three.npy", x)
    (tmp_path / "one.json").write_text(json.dumps({"data": x[0].tolist()}))  # no batch dim: one row
    path = MODELS / "digits" / "1" / "digits.onnx"
    opts = ImportOptions(
        name="d", task="classification", samples=[tmp_path / "three.npy", tmp_path / "one.json"]
    )
    prep = prepare(path, opts)
    np.testing.assert_array_equal(prep.golden_inputs["input"], np.concatenate([x, x[:1]]))
    assert prep.manifest.golden.origin == "the user's samples (three.npy, one.json)"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    final = write_package(prep, pkg)
    verify_files(pkg, final)  # sha256 of model and golden as the manifest says


def test_fixed_batch_uses_as_many_samples_as_the_batch(tmp_path: Path) -> None:
    sample = MODELS / "face" / "1" / "samples" / "astronaut.png"
    opts = ImportOptions(
        name="f", postprocess="blazeface", image=ImageOptions(input_range=(-1.0, 1.0), resize="letterbox"),
        decoder=DecoderOptions(anchors="face"), samples=[sample, sample],
    )  # fmt: skip
    prep = prepare(MODELS / "face" / "1" / "model.tflite", opts)
    assert prep.golden_inputs["input"].shape == (1, 128, 128, 3)
    assert "first 1 row(s)" in prep.manifest.golden.origin
    assert not prep.manifest.batching.enabled


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        (
            ImportOptions(postprocess="blazeface", image=ImageOptions(input_range=(-1, 1))),
            "--anchors face|person",
        ),
        (
            ImportOptions(
                postprocess="blazeface",
                image=ImageOptions(input_range=(-1, 1)),
                decoder=DecoderOptions(anchors="person"),
            ),
            "896 rows",
        ),
        (
            ImportOptions(task="detection", image=ImageOptions(input_range=(-1, 1), size=(64, 64))),
            "disagrees",
        ),
        (ImportOptions(name="Bad Name", task="detection"), "--name"),
    ],
)
def test_refusals_name_the_flag(opts: ImportOptions, words: str) -> None:
    with pytest.raises(ImportRejected, match=words.replace("|", r"\|")):
        prepare(MODELS / "face" / "1" / "model.tflite", opts)


def test_ssd_detector_imported_and_served_by_the_engine(tmp_path: Path) -> None:
    """An SSD-shaped ONNX (normalized yxyx boxes, per-class scores) through import and Engine.predict."""
    import cv2

    from edge_agent.runtime.engine import Engine
    from edge_agent.runtime.importer import import_model
    from edge_agent.runtime.store import ModelStore
    from tests.runtime.onnx_builders import constant_ssd

    boxes = np.array(
        [[[0.25, 0.5, 0.5, 0.75], [0.26, 0.5, 0.5, 0.75], [0.6, 0.1, 0.9, 0.3]]]
    )  # ymin, xmin, ...
    scores = np.array([[[0.02, 0.9, 0.08], [0.02, 0.8, 0.18], [0.1, 0.2, 0.7]]])  # class 0: background
    path = constant_ssd(tmp_path / "ssd.onnx", boxes, scores)
    store = ModelStore(tmp_path / "models", tmp_path / "state.json")
    opts = ImportOptions(
        name="ssd", postprocess="ssd", labels=["background", "person", "car"],
        image=ImageOptions(input_range=(0.0, 1.0), resize="letterbox"), decoder=DecoderOptions(min_score=0.5),
    )  # fmt: skip
    m, _ = import_model(store, path, opts)
    assert m.postprocessing is not None and m.postprocessing.type == "ssd"
    img = np.full((32, 64, 3), 100, np.uint8)  # 64x32 into 64x64: scale 1, 16 px of padding above
    ok, png = cv2.imencode(".png", img)
    assert ok
    engine = Engine(store)
    try:
        (row,) = engine.predict("ssd", images=[png.tobytes()]).results
    finally:
        engine.close()
    got = [(b["label"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in row["boxes"]]
    # row 0: x 0.5..0.75 * 64 = 32..48, y 0.25..0.5 * 64 = 16..32 -> minus 16 px padding: 0..16
    # row 1 overlaps row 0 with the same class: suppressed; row 2 ("car") lies in the padding below: y clipped
    assert got == [("person", 32.0, 0.0, 48.0, 16.0), ("car", 6.4, 22.4, 19.2, 32.0)]


def test_qdq_onnx_tolerance_is_one_output_step(tmp_path: Path) -> None:
    """digits_int8 re-imported from its bare file: the importer finds the QDQ graph and derives the
    tolerance the build script wrote by hand (1.5 steps of the output's DequantizeLinear scale)."""
    bundled = read_manifest(MODELS / "digits_int8" / "1")
    heldout = np.load(DATA / "digits_heldout.npz")
    np.save(tmp_path / "x.npy", heldout["images"][:32, None].astype(np.float32) / 16.0)
    opts = ImportOptions(name="d", task="classification", samples=[tmp_path / "x.npy"])
    m = prepare(MODELS / "digits_int8" / "1" / bundled.file, opts).manifest
    assert m.quantization.scheme == "int8_static_qdq"
    assert m.golden.atol == pytest.approx(bundled.golden.atol, rel=1e-3), m.golden.tolerance_reason
    # the fp32 model is not mistaken for a quantized one
    fp32 = prepare(MODELS / "digits" / "1" / "digits.onnx", opts).manifest
    assert fp32.quantization.scheme == "none" and "fp32" in fp32.golden.tolerance_reason


def test_ssd_output_roles_by_flag(tmp_path: Path) -> None:
    """Boxes [1, A, 4] and 4-class scores [1, A, 4] cannot be told apart by shape: the refusal names
    --ssd-outputs, and naming the roles works."""
    from tests.runtime.onnx_builders import constant_ssd

    boxes = np.array([[[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]])
    scores = np.array([[[0.9, 0.1, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0]]])
    path = constant_ssd(tmp_path / "ssd.onnx", boxes, scores)
    image = ImageOptions(input_range=(0.0, 1.0))
    with pytest.raises(ImportRejected, match="--ssd-outputs boxes=NAME"):
        prepare(path, ImportOptions(name="s", postprocess="ssd", image=image))
    roles = DecoderOptions(ssd_outputs={"boxes": "boxes", "scores": "scores"})
    m = prepare(path, ImportOptions(name="s", postprocess="ssd", image=image, decoder=roles)).manifest
    assert (m.postprocessing.boxes_output, m.postprocessing.scores_output) == ("boxes", "scores")  # type: ignore[union-attr]
    wrong = DecoderOptions(ssd_outputs={"boxes": "boxes", "scores": "nope"})
    with pytest.raises(ImportRejected, match="unknown: \\['nope'\\]"):
        prepare(path, ImportOptions(name="s", postprocess="ssd", image=image, decoder=wrong))


def test_cli_anchor_choices_are_the_presets() -> None:
    import argparse

    from edge_agent.runtime.blazeface import PRESETS
    from edge_agent.runtime.import_args import add_import_arguments

    p = argparse.ArgumentParser()
    add_import_arguments(p)
    action = next(a for a in p._actions if "--anchors" in a.option_strings)
    assert sorted(action.choices or []) == sorted(PRESETS)


def test_drift_reference_from_the_samples_or_the_reason_why_not(tmp_path: Path) -> None:
    """Enough sample rows: drift.json beside the manifest (a file the manifest does not list, so
    ``verify_files`` stays clean); seeded inputs or too few rows: none, and the note says why."""
    from edge_agent.runtime import drift

    heldout = np.load(DATA / "digits_heldout.npz")
    x = heldout["images"][:400].astype(np.float32)[:, None] / 16.0
    np.save(tmp_path / "rows.npy", x)
    path = MODELS / "digits" / "1" / "digits.onnx"
    prep = prepare(path, ImportOptions(name="d", task="classification", samples=[tmp_path / "rows.npy"]))
    assert prep.drift_note == "drift reference written from 400 sample row(s): brightness, contrast"
    ref = prep.drift_reference
    assert ref is not None and ref["rows"] == 400 and set(ref["features"]) == {"brightness", "contrast"}
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    final = write_package(prep, pkg)
    verify_files(pkg, final)
    assert drift.load_reference(pkg) == ref
    same = drift.compare(ref, drift.features(x))
    assert same["max"] < 1e-9 and not same["drifted"]

    seeded = prepare(path, ImportOptions(name="d", task="classification"))
    assert seeded.drift_reference is None and seeded.drift_note.startswith(
        "no drift reference written: no --sample given, and seeded inputs say nothing"
    )
    np.save(tmp_path / "few.npy", x[:3])
    few = prepare(path, ImportOptions(name="d", task="classification", samples=[tmp_path / "few.npy"]))
    assert few.drift_reference is None and "hold 3 row(s), fewer than the 30" in few.drift_note
    empty = tmp_path / "empty"
    empty.mkdir()
    write_package(few, empty)
    assert not (empty / drift.REFERENCE_FILE).exists()


def test_image_samples_give_brightness_contrast_and_size(tmp_path: Path) -> None:
    """A fixed-batch image model (BlazeFace, batch 1): the golden takes one sample, the reference all
    of them, with their source sizes."""
    import cv2

    photo = cv2.imread(str(MODELS / "face" / "1" / "samples" / "astronaut.png"))
    samples = []
    for i in range(32):
        side = 200 + 8 * i
        path = tmp_path / f"crop{i}.png"
        cv2.imwrite(str(path), photo[:side, : side + 40])
        samples.append(path)
    opts = ImportOptions(
        name="f", postprocess="blazeface", image=ImageOptions(input_range=(-1.0, 1.0), resize="letterbox"),
        decoder=DecoderOptions(anchors="face"), samples=samples,
    )  # fmt: skip
    prep = prepare(MODELS / "face" / "1" / "model.tflite", opts)
    assert prep.golden_inputs["input"].shape == (1, 128, 128, 3)
    ref = prep.drift_reference
    assert ref is not None and ref["rows"] == 32
    assert set(ref["features"]) == {"brightness", "contrast", "pixels"}
    assert ref["features"]["pixels"]["min"] == 200 * 240 and ref["features"]["pixels"]["max"] == 448 * 488
