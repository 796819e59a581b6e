"""``cloud-sync``: the command line. Each command is a thin wrapper over a
library call; this module alone turns errors into messages and exit codes.

    python -m cloud_sync.cli ingest        # the ingest role (MQTT -> SQLite)
    python -m cloud_sync.cli api           # the HTTP API
    python -m cloud_sync.cli models publish PACKAGE_DIR --key KEY.pem
    python -m cloud_sync.cli models publish model.onnx --name NAME --task classification --key KEY.pem
    python -m cloud_sync.cli deploy MODEL VERSION --device DEV --base-url URL
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_sync.config import CloudConfig, load_config, with_overrides
from cloud_sync.errors import BrokerError, CloudSyncError, ConfigError, InvalidRequest, NotFound, StoreError
from edge_agent.errors import EdgeAgentError

PG_SCHEMES = ("postgresql://", "postgres://")

logger = logging.getLogger("cloud_sync")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_STORE, EXIT_BROKER = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES: tuple[tuple[type[CloudSyncError], int], ...] = (
    (ConfigError, EXIT_CONFIG),
    (NotFound, EXIT_NOT_FOUND),
    (InvalidRequest, EXIT_USAGE),
    (StoreError, EXIT_STORE),
    (BrokerError, EXIT_BROKER),
)


def exit_code(exc: CloudSyncError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# -- commands -------------------------------------------------------------------------------
def cmd_ingest(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync import ingest

    config = with_overrides(
        _with_db(config, args),
        ingest_shared=args.shared,
        ingest_group=args.group,
        ingest_client_id=args.client_id,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ingest.run(config, stop)
    return EXIT_OK


def cmd_api(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.api import serve

    serve(with_overrides(_with_db(config, args), api_host=args.host, api_port=args.port))
    return EXIT_OK


def cmd_migrate(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store import Store

    store = Store(_with_db(config, args).db_target)
    print(f"{store.where}: schema version {store.schema_version}")
    store.close()
    return EXIT_OK


def cmd_devices(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store import Store

    store = Store(_with_db(config, args).db_target)
    devices = store.devices(args.online)
    store.close()
    if args.json:
        _print_json(devices)
        return EXIT_OK
    for d in devices:
        state = "unknown" if d["online"] is None else "online" if d["online"] else "offline"
        print(f"{d['id']:<32} {state:<8} last seen {d['last_seen']:.0f}  agent {d['agent_version'] or '-'}")
    return EXIT_OK


def cmd_results(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store import ResultQuery, Store

    store = Store(_with_db(config, args).db_target)
    q = ResultQuery(
        args.device, args.model, args.label, args.since, args.until, args.limit, cursor=args.cursor
    )
    page = store.results(q)
    store.close()
    if args.json:
        _print_json({"results": page.items, "next_cursor": page.next_cursor})
        return EXIT_OK
    for r in page.items:
        model = f"{r['model']}@{r['version']}"
        print(f"{r['created']:.3f} {r['device']:<24} {model:<24} {r['label'] or '-':<16} {r['id']}")
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return EXIT_OK


# -- signed model updates ---------------------------------------------------------------------
def cmd_keys_generate(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.deploy import generate_keys

    out = args.out or config.signing_key_path
    if out is None:
        raise InvalidRequest("where to write the private key: --out PATH (or set signing_key_path)")
    keys = generate_keys(out, args.public)
    print(f"private key: {keys.private} (mode 0600: keep it secret, off the devices)")
    print(f"public key:  {keys.public} (install it on the devices as their trusted key)")
    print(f"key id:      {keys.key_id}")
    return EXIT_OK


def cmd_models_publish(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.artifacts import artifact_dir
    from cloud_sync.deploy import publish
    from cloud_sync.store import Store

    config = _with_db(config, args)
    key = args.key or config.signing_key_path
    if key is None:
        raise InvalidRequest("which signing key: --key KEY.pem (or set signing_key_path)")
    source: Path = args.package_dir
    if not source.exists():
        raise InvalidRequest(f"{source}: no such file or directory")
    store = Store(config.db_target)
    try:
        if source.is_dir():
            published = publish(store, source, key, artifact_dir(config))  # what the API serves
            _print_json(published.to_dict())
        else:
            from cloud_sync.deploy import publish_file
            from edge_agent.runtime.import_args import options_from_args

            try:
                options = options_from_args(args)
            except EdgeAgentError as exc:
                raise InvalidRequest(exc.message) from None
            published, manifest, drift = publish_file(store, source, options, key, artifact_dir(config))
            _print_json(published.to_dict() | {"manifest": manifest, "drift": drift})
    finally:
        store.close()
    return EXIT_OK


def cmd_models_list(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store import Store

    store = Store(_with_db(config, args).db_target)
    models = [store.model(m["name"]) for m in store.models()]
    store.close()
    if args.json:
        _print_json(models)
        return EXIT_OK
    for m in models:
        for v in m["versions"]:
            signed = f"key {v['key_id']}" if v["signature"] else "unsigned"
            print(f"{m['name']:<24} {v['version']:<12} {v['sha256'][:16]}  {signed}")
    return EXIT_OK


def cmd_keys_rotate(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.trust import load_keys, rotate, trust_dir

    config = _with_db(config, args)
    current = args.key or ([config.signing_key_path] if config.signing_key_path else [])
    if not current:
        raise InvalidRequest("which current key signs the rotation: --key KEY.pem (or set signing_key_path)")
    if args.threshold < 1:
        raise InvalidRequest("--threshold must be at least 1")
    done = rotate(trust_dir(config), load_keys(current), load_keys(args.new), args.threshold)
    print(f"root version {done.version}: keys {', '.join(done.keyids)}, threshold {done.threshold}")
    print(f"written to {done.path}; now set signing_key_path/cosigning_key_paths to the new keys")
    return EXIT_OK


def cmd_deploy(config: CloudConfig, args: argparse.Namespace) -> int:
    import os
    import socket

    from cloud_sync.deploy import deploy
    from cloud_sync.mqtt import MqttLink, broker_options
    from cloud_sync.store import Store
    from cloud_sync.trust import Signer

    config = _with_db(config, args)
    signer = Signer.from_config(config, args.key)
    store = Store(config.db_target)
    link = MqttLink(broker_options(config), f"cloud-deploy-{socket.gethostname()[:40]}-{os.getpid()}")
    try:
        link.start(wait_s=10.0)
        status = deploy(
            store,
            link,
            args.model,
            args.version,
            devices=args.device,
            all_devices=args.all,
            base_url=args.base_url,
            signer=signer,
            note=args.note,
            rollback=args.rollback,
        )
    finally:
        link.close()
        store.close()
    _print_deployment(status, args.json)
    return EXIT_OK


def cmd_deployments(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store import Store

    store = Store(_with_db(config, args).db_target)
    try:
        if args.id:
            _print_deployment(store.deployment_status(args.id), args.json)
            return EXIT_OK
        items = [store.deployment_status(d["id"]) for d in store.deployments(args.limit)]
    finally:
        store.close()
    if args.json:
        _print_json(items)
        return EXIT_OK
    for d in items:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(d["summary"].items()))
        print(f"{d['id']}  {d['model']} {d['version']}  created {d['created']:.0f}  {counts}")
    return EXIT_OK


def _print_deployment(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(status)
        return
    print(f"deployment {status['id']}: {status['model']} {status['version']}")
    for d in status["devices"]:
        progress = "" if d["progress"] is None else f" {d['progress']:.0%}"
        reason = f"  ({d['reason']})" if d["reason"] else ""
        print(f"  {d['device']:<32} {d['state']}{progress}{reason}")


def cmd_db_copy(config: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_sync.store.copy import copy_database

    report = copy_database(_db_arg(args.source), _db_arg(args.target), batch=args.batch)
    for table, n in report.items():
        print(f"{table:<20} {n:>10} rows")
    return EXIT_OK


def _db_arg(text: str) -> Path | str:
    """sqlite:///abs/path or a plain path: an SQLite file; postgresql://...: PostgreSQL."""
    if text.startswith("sqlite:///"):
        return Path(text.removeprefix("sqlite://"))
    return text if text.startswith(PG_SCHEMES) else Path(text)


def cmd_config(config: CloudConfig, args: argparse.Namespace) -> int:
    _print_json(config.redacted())
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------
Command = Callable[[CloudConfig, argparse.Namespace], int]


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="FILE|URL",
        help="the database: an SQLite file, or a postgresql:// URL "
        "(default: db_url, else db_path of the config)",
    )


def _with_db(config: CloudConfig, args: argparse.Namespace) -> CloudConfig:
    """The config with --db applied: a postgresql:// URL sets db_url, anything else db_path."""
    db: str | None = getattr(args, "db", None)
    if db is None:
        return config
    if db.startswith(PG_SCHEMES):
        return with_overrides(config, db_url=db)
    return with_overrides(config, db_path=Path(db)).model_copy(update={"db_url": None})


def _import_arguments(p: argparse.ArgumentParser) -> None:
    from edge_agent.runtime.import_args import add_import_arguments

    add_import_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-sync", description="The cloud end of the edge agents' fleet link: ingest and API."
    )
    parser.add_argument("--config", type=Path, help="TOML config file (else CLOUD_CONFIG, else defaults)")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log_level"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("ingest", cmd_ingest, "Run the ingest role: store what devices publish, acknowledge results.")
    _db(p)
    p.add_argument(
        "--shared",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use an MQTT 5 shared subscription, to run several ingest roles side by side",
    )
    p.add_argument("--group", help="shared-subscription group (default: ingest_group)")
    p.add_argument("--client-id", help="MQTT client id, unique per process (default: ingest_client_id)")

    p = add("api", cmd_api, "Run the HTTP API (devices, results, telemetry, commands, models, deployments).")
    _db(p)
    p.add_argument("--host", help="bind address (default: api_host)")
    p.add_argument("--port", type=int, help="port (default: api_port)")

    _db(add("migrate", cmd_migrate, "Create or upgrade the database schema and print its version."))

    p = add("devices", cmd_devices, "List the devices in the database.")
    _db(p)
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=None, help="only (not) online")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("results", cmd_results, "List stored results, newest first.")
    _db(p)
    for flag in ("device", "model", "label"):
        p.add_argument(f"--{flag}", help=f"only results with this {flag}")
    p.add_argument("--since", type=float, help="created at or after (Unix time)")
    p.add_argument("--until", type=float, help="created before (Unix time)")
    p.add_argument("--limit", type=int, default=20, help="results per page (default 20)")
    p.add_argument("--cursor", help="next page: the cursor printed by the previous one")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("keys", cmd_config, "Manage the Ed25519 keys that sign model manifests and update metadata.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="generate or rotate")
    p = actions.add_parser(
        "generate", help="write a new key pair", description="Write a new Ed25519 key pair."
    )
    p.set_defaults(func=cmd_keys_generate)
    p.add_argument("--out", type=Path, help="private key file (default: signing_key_path); mode 0600")
    p.add_argument("--public", type=Path, help="public key file (default: OUT with .pub.pem)")
    p = actions.add_parser(
        "rotate",
        help="trust new keys: a new root version signed by the old keys and the new",
        description="Write root metadata version N+1 naming the new keys and threshold, signed by the "
        "current root's keys (--key, repeat for a threshold) and every new key. Devices move to it with "
        "their next desired state; metadata signed by keys no longer named is refused from then on. "
        "Point signing_key_path (and cosigning_key_paths) at the new keys afterwards.",
    )
    p.set_defaults(func=cmd_keys_rotate)
    p.add_argument("--key", type=Path, action="append", help="a current key (default: signing_key_path)")
    p.add_argument("--new", type=Path, action="append", required=True, help="a new private key (repeat)")
    p.add_argument("--threshold", type=int, default=1, help="signatures required from now on (default 1)")
    _db(p)

    p = add("models", cmd_config, "Publish signed model versions; list them.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="publish or list")
    p = actions.add_parser(
        "publish",
        help="pack, store and sign a model package",
        description="Pack a model package directory into an artifact, sign its manifest, record the version.",
    )
    p.set_defaults(func=cmd_models_publish)
    p.add_argument(
        "package_dir",
        type=Path,
        metavar="PATH",
        help="a package directory (manifest.json, model, golden), or a bare .onnx/.tflite file that is "
        "made into a package first, with the same options and checks as `edge-agent models import`",
    )
    p.add_argument("--key", type=Path, help="Ed25519 private key, PEM (default: signing_key_path)")
    _db(p)
    _import_arguments(p)
    p = actions.add_parser("list", help="published versions", description="List published model versions.")
    p.set_defaults(func=cmd_models_list)
    p.add_argument("--json", action="store_true", help="print JSON")
    _db(p)

    p = add(
        "deploy", cmd_deploy, "Deploy a published model version to devices (their retained desired state)."
    )
    p.add_argument("model", help="model name")
    p.add_argument("version", help="published version")
    targets = p.add_mutually_exclusive_group(required=True)
    targets.add_argument("--device", action="append", help="a target device (repeat for several)")
    targets.add_argument("--all", action="store_true", help="every device the cloud has heard from")
    p.add_argument("--base-url", required=True, help="the API's URL as devices reach it (artifact downloads)")
    p.add_argument("--note", help="free text kept with the deployment")
    p.add_argument(
        "--rollback",
        action="store_true",
        help="mark it as going back to an older version",
    )
    p.add_argument("--key", type=Path, help="key signing the update metadata (default: signing_key_path)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db(p)

    p = add("deployments", cmd_deployments, "List deployments, or show one with each device's state.")
    p.add_argument("id", nargs="?", help="a deployment id: show its devices")
    p.add_argument("--limit", type=int, default=20, help="deployments listed (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db(p)

    add("config", cmd_config, "Print the effective configuration (secrets hidden).")

    p = add("db", cmd_config, "Move the cloud database between SQLite and PostgreSQL.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="copy")
    p = actions.add_parser(
        "copy",
        help="copy every row of one database into another (SQLite file -> PostgreSQL)",
        description="Copy every table of a cloud database into another one, created or migrated to the "
        "same schema version first. The target must hold no results, devices or commands yet (refused "
        "otherwise, nothing written). Stop the ingest and API roles first: rows written during the "
        "copy are not copied. Exit 0 with the row counts, which are checked against the source.",
    )
    p.set_defaults(func=cmd_db_copy)
    p.add_argument("--from", dest="source", required=True, metavar="FILE|URL", help="source database")
    p.add_argument("--to", dest="target", required=True, metavar="FILE|URL", help="target database")
    p.add_argument("--batch", type=int, default=5000, help="rows per insert transaction (default 5000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.log_level:
            config = with_overrides(config, log_level=args.log_level)
        logging.basicConfig(
            level=config.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        func: Command = args.func
        return func(config, args)
    except CloudSyncError as exc:
        print(f"cloud-sync: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
