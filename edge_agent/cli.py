"""``edge-agent``: the command line. Each command is a thin wrapper over a
library call; this module alone turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent import render
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import (
    ConfigError,
    EdgeAgentError,
    InvalidInput,
    ModelNotFound,
    PackageError,
    QualityGateFailed,
)
from edge_agent.roles import add_role_commands

logger = logging.getLogger("edge_agent")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_BAD_INPUT, EXIT_PACKAGE = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
EXIT_QUALITY = 7  # a derived model (models quantize) under its quality threshold: not written


def exit_code(exc: EdgeAgentError) -> int:
    for cls, code in (
        (ConfigError, EXIT_CONFIG),
        (ModelNotFound, EXIT_NOT_FOUND),
        (InvalidInput, EXIT_BAD_INPUT),
        (PackageError, EXIT_PACKAGE),
        (QualityGateFailed, EXIT_QUALITY),
    ):
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def _engine(config: AgentConfig) -> Any:
    from edge_agent.bootstrap import build_engine

    return build_engine(config)


# -- commands -------------------------------------------------------------------
def cmd_predict(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.inputs_io import read_input_file

    engine = _engine(config)
    model = engine.model(args.model, args.version)
    tensors, images = read_input_file(Path(args.input), model.manifest)
    pred = engine.predict(args.model, tensors, images=images, version=args.version)
    if args.json:
        print(json.dumps(render.prediction_dict(pred), indent=2))
    else:
        print(render.prediction_text(pred, Path(args.input).name))
    return EXIT_OK


def cmd_demo(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.demo import run_demo

    return EXIT_OK if run_demo(_engine(config), models=args.models or None) else EXIT_ERROR


def cmd_models_list(config: AgentConfig, args: argparse.Namespace) -> int:
    engine = _engine(config)
    rows = [engine.describe(name) for name in engine.store.names()]
    print(json.dumps(rows, indent=2) if args.json else render.models_table(rows))
    return EXIT_OK


def cmd_models_inspect(config: AgentConfig, args: argparse.Namespace) -> int:
    store = _engine(config).store
    m = store.manifest(args.model, args.version)
    print(json.dumps(m.model_dump(mode="json"), indent=2))
    return EXIT_OK


def cmd_models_verify(config: AgentConfig, args: argparse.Namespace) -> int:
    store = _engine(config).store
    targets = (
        [(args.model, v) for v in ([args.version] if args.version else store.versions(args.model))]
        if args.model
        else [(n, v) for n in store.names() for v in store.versions(n)]
    )
    if args.model and not targets:
        store.package_dir(args.model, "")
    failed = 0
    for name, version in targets:
        try:
            store.verify(name, version)
            print(f"ok      {name}/{version}")
        except PackageError as exc:
            failed += 1
            print(f"FAILED  {name}/{version}: {exc.message}")
    return EXIT_PACKAGE if failed else EXIT_OK


def cmd_models_selftest(config: AgentConfig, args: argparse.Namespace) -> int:
    engine = _engine(config)
    names = [args.model] if args.model else engine.store.names()
    failed = 0
    for name in names:
        version = args.version or engine.store.active_version(name)
        try:
            _, report = engine.store.load(name, version, engine.options.backend)
            diffs = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_diff.items())
            print(f"pass    {name}/{version}  max |diff|: {diffs}")
        except EdgeAgentError as exc:
            failed += 1
            print(f"FAIL    {name}/{version}: {exc.message}")
    return EXIT_PACKAGE if failed else EXIT_OK


def cmd_models_activate(config: AgentConfig, args: argparse.Namespace) -> int:
    report = _engine(config).activate(args.model, args.version)
    print(f"{args.model}/{args.version} is active ({report.message})")
    return EXIT_OK


def cmd_models_rollback(config: AgentConfig, args: argparse.Namespace) -> int:
    target = _engine(config).rollback(args.model)
    print(f"{args.model} rolled back to version {target}")
    return EXIT_OK


def cmd_models_import(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.runtime.import_args import options_from_args
    from edge_agent.runtime.importer import import_model

    engine = _engine(config)
    manifest, drift_note = import_model(engine.store, args.path, options_from_args(args))
    print(json.dumps(manifest.model_dump(mode="json"), indent=2))
    print(drift_note)
    where = f"{manifest.name}/{manifest.version}"
    if args.activate:
        report = engine.activate(manifest.name, manifest.version)
        print(f"imported {where} and activated it ({report.message})")
    else:
        print(f"imported {where} (active: {engine.store.active_version(manifest.name)})")
    return EXIT_OK


def cmd_models_quantize(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.tools.quantize import QuantizeOptions, quantize

    engine = _engine(config)
    options = QuantizeOptions(
        version=args.to_version, threshold=args.threshold / 100.0, fp32_tail=args.fp32_tail
    )
    try:
        report = quantize(
            engine.store,
            args.model,
            args.calibration,
            args.eval,
            source_version=args.version,
            options=options,
        )
    except QualityGateFailed as exc:
        if args.json:
            print(json.dumps(exc.details.get("report"), indent=2))
        else:
            from edge_agent.tools.agreement import QuantizeReport

            print(QuantizeReport.from_dict(exc.details["report"]).table())
        raise
    if args.activate:
        engine.activate(args.model, report.version)
        report.activated = True
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        state = "written and active" if report.activated else "written (activate it with models activate)"
        print(f"{args.model}/{report.version}: {state}")
    return EXIT_OK


def cmd_models_bench(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.runtime import bench

    engine = _engine(config)
    settings = bench.BenchSettings(
        batches=tuple(args.batch),
        threads=tuple(args.threads or ()),
        seconds=args.seconds,
        tensors=args.tensors,
    )
    figures = bench.run_bench(
        engine.store, args.model, args.version, settings, max_image_pixels=config.max_image_pixels
    )
    path = bench.save(config.data_dir, figures)
    if args.json:
        print(figures.model_dump_json(indent=2))
    else:
        print(bench.table(figures))
        print(f"saved to {path} (the sync role reports it on models/reported)")
    return EXIT_OK


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def cmd_backends(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.runtime.backends import availability

    for name, reason in availability().items():
        print(f"{name:8} {'available' if reason is None else 'UNAVAILABLE: ' + reason}")
    return EXIT_OK


def cmd_storage_repack(config: AgentConfig, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edge_agent.repack import repack

    report = repack(config.data_dir, reserve_bytes=config.storage.reserve_bytes)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.message)
        if report.outcome == "repacked":
            kib = (report.bytes_before // 1024, report.bytes_after // 1024)
            print(f"{kib[0]} KiB -> {kib[1]} KiB in {report.seconds:.2f} s")
    return EXIT_OK if report.ok else EXIT_ERROR


# -- parser ---------------------------------------------------------------------
def _add_import_arguments(sp: argparse.ArgumentParser) -> None:
    from edge_agent.runtime.import_args import add_import_arguments

    add_import_arguments(sp)


Command = Callable[[AgentConfig, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent", description="Edge inference agent: models served on the device."
    )
    p.add_argument(
        "--config", type=Path, help="TOML config file (also EDGE_CONFIG); EDGE_* variables override it"
    )
    p.add_argument("--model-dir", type=Path, help="model store root (EDGE_MODEL_DIR)")
    p.add_argument("--data-dir", type=Path, help="writable state directory (EDGE_DATA_DIR)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    def add(parent: Any, name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=func)
        return sp

    sp = add(sub, "predict", cmd_predict, "Predict offline, without a server: image, JSON array or .npy.")
    sp.add_argument("model", help="model name, e.g. digits_int8")
    sp.add_argument("input", help='an image (.jpg .png .bmp), a JSON array / {"data": ...}, or a .npy file')
    sp.add_argument("--version", help="model version (default: the active one)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")

    sp = add(sub, "demo", cmd_demo, "Predict on every bundled model's sample inputs, with timings.")
    sp.add_argument("models", nargs="*", help="only these models (default: all)")

    add_role_commands(sub, add)

    sp = add(sub, "backends", cmd_backends, "Show which inference backends can run here, and why not.")

    storage = add(sub, "storage", lambda c, a: EXIT_USAGE, "Maintain the device database.")
    ssub = storage.add_subparsers(
        dest="storage_command", required=True, metavar="ACTION", help="database action"
    )
    sp = add(
        ssub,
        "repack",
        cmd_storage_repack,
        "Rebuild the database to the page size new databases get (512 bytes: fewer bytes written per "
        "result), if it has another. Every role must be stopped (`edge-agent up` does this at start); "
        "needs free space of twice the file plus the disk reserve. Exit code 1 if it could not run.",
    )
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

    models = add(sub, "models", lambda c, a: EXIT_USAGE, "Manage the model store.")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION", help="store action")
    sp = add(msub, "list", cmd_models_list, "List models, versions and the active version.")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp = add(msub, "inspect", cmd_models_inspect, "Print a version's manifest.")
    sp.add_argument("model", help="model name")
    sp.add_argument("--version", help="version (default: active)")
    sp = add(msub, "verify", cmd_models_verify, "Check manifests and sha256 of model files.")
    sp.add_argument("model", nargs="?", help="model name (default: all)")
    sp.add_argument("version", nargs="?", help="version (default: all)")
    sp = add(msub, "selftest", cmd_models_selftest, "Load models and run their golden self-test.")
    sp.add_argument("model", nargs="?", help="model name (default: all)")
    sp.add_argument("--version", help="version (default: active)")
    sp = add(msub, "activate", cmd_models_activate, "Self-test a version, then make it active.")
    sp.add_argument("model", help="model name")
    sp.add_argument("version", help="version to activate")
    sp = add(msub, "rollback", cmd_models_rollback, "Re-activate the previously active version.")
    sp.add_argument("model", help="model name")
    sp = add(msub, "import", cmd_models_import, "Package a bare .onnx/.tflite file into the store.")
    sp.add_argument("path", type=Path, help="the model file (.onnx or .tflite; told apart by content)")
    sp.add_argument("--activate", action="store_true", help="self-test the new version and make it active")
    _add_import_arguments(sp)
    sp = add(
        msub,
        "quantize",
        cmd_models_quantize,
        "Quantize an fp32 ONNX model to int8 (static QDQ, per-channel) as a new version, after checking "
        "its top-1 agreement with fp32. Needs the optional tools: pip install 'edge-agent[tools]'.",
    )
    sp.add_argument("model", help="model name (an fp32 ONNX model)")
    sp.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="calibration rows: .npz (arrays named after the inputs, optional `labels`), .npy, .json, "
        "or a directory of images (label sub-directories optional); see docs/model-packages.md",
    )
    sp.add_argument(
        "--eval", type=Path, help="evaluation rows, same forms (default: the calibration set itself)"
    )
    sp.add_argument("--version", help="source version (default: the active one)")
    sp.add_argument("--to-version", help="version to write (default: the next integer)")
    sp.add_argument(
        "--threshold",
        type=float,
        default=99.0,
        help="minimum top-1 agreement with fp32 in percent (default 99); under it nothing is written "
        "and the exit code is 7",
    )
    sp.add_argument(
        "--fp32-tail",
        type=int,
        default=0,
        metavar="N",
        help="keep the N weighted layers (Conv/MatMul/Gemm) nearest the outputs, and every node after "
        "them, in float (default 0: quantize everything); for detectors whose box and score heads "
        "lose too much in int8",
    )
    sp.add_argument("--activate", action="store_true", help="activate the new version once written")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp = add(
        msub,
        "bench",
        cmd_models_bench,
        "Benchmark a model on this device: p50/p99 latency per stage and rows/s per batch size and "
        "thread count, memory added; saved for the sync role to report.",
    )
    sp.add_argument("model", help="model name")
    sp.add_argument("--version", help="version (default: active)")
    sp.add_argument("--batch", type=_int_list, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    sp.add_argument(
        "--threads", type=_int_list, help="runtime thread counts (default: 1 and all cores up to 4)"
    )
    sp.add_argument(
        "--seconds", type=float, default=1.0, help="time per batch size and thread count (default 1)"
    )
    sp.add_argument(
        "--tensors",
        action="store_true",
        help="send the golden tensors even to a model that takes images (no image decoding per request)",
    )
    sp.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {k: v for k, v in (("model_dir", args.model_dir), ("data_dir", args.data_dir)) if v}
        config = load_config(args.config)
        if overrides:
            config = config.model_copy(update=overrides)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else getattr(logging, config.log_level),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        code: int = args.func(config, args)
        return code
    except EdgeAgentError as exc:
        print(f"edge-agent: error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
