"""``edge-console``: the operator's desktop companion to the cloud API.

Each command is a thin wrapper over one :class:`ConsoleClient` call; this module
alone renders (rich on a terminal, plain parseable text otherwise) and decides
exit codes::

    python -m cloud_sync.console.app devices --watch
    python -m cloud_sync.console.app send pi-kitchen ping
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, get_args

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from cloud_sync.console.client import (
    DEFAULT_API,
    ApiUnreachable,
    BenchReport,
    CommandTimeout,
    ConsoleClient,
    Deployment,
    DeploymentTimeout,
    Device,
    Result,
    ResultFilter,
)
from cloud_sync.errors import BrokerError, CloudSyncError, InvalidRequest, NotFound, StoreError, Unauthorized
from edge_agent.sync.protocol import CommandName

PROG = "edge-console"
ENV_API, ENV_TOKEN = "EDGE_CONSOLE_API", "EDGE_CONSOLE_TOKEN"
PLAIN_WIDTH = 250  # no wrapping when the output is not a terminal
COMMAND_NAMES = get_args(CommandName)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE, EXIT_BROKER = 0, 1, 2, 4, 5, 6
EXIT_UNREACHABLE, EXIT_UNAUTHORIZED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 7, 8, 9, 130
EXIT_CODES: tuple[tuple[type[CloudSyncError], int], ...] = (
    (InvalidRequest, EXIT_USAGE),
    (NotFound, EXIT_NOT_FOUND),
    (StoreError, EXIT_STORE),
    (BrokerError, EXIT_BROKER),
    (ApiUnreachable, EXIT_UNREACHABLE),
    (Unauthorized, EXIT_UNAUTHORIZED),
    (CommandTimeout, EXIT_TIMEOUT),
    (DeploymentTimeout, EXIT_TIMEOUT),
)
HINTS: tuple[tuple[type[CloudSyncError], str], ...] = (
    (Unauthorized, f"pass --token or set {ENV_TOKEN}"),
    (ApiUnreachable, f"is the API running? pass --api or set {ENV_API}"),
)
TRANSIENT = (ApiUnreachable, StoreError, BrokerError)  # --watch shows these and keeps going
STATE_STYLES = {
    "online": "green",
    "offline": "red",
    "active": "green",
    "failed": "red",
    "rolled_back": "red",
    "superseded": "yellow",
}

app = typer.Typer(
    name=PROG,
    help="Drive the edge fleet through the cloud API: devices, results, commands, deployments.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def exit_code(exc: CloudSyncError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


# -- output ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    api: str
    token: str | None


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, width=PLAIN_WIDTH)


def _client(ctx: typer.Context) -> ConsoleClient:
    settings: _Settings = ctx.find_root().obj
    return ctx.with_resource(ConsoleClient(settings.api, settings.token))


def _emit(out: Console, line: str | Text) -> None:
    out.print(line, markup=False, soft_wrap=True)
    out.file.flush()


def _json(out: Console, data: Any) -> None:
    if out.is_terminal:
        out.print_json(data=data)
    else:
        _emit(out, json.dumps(data, indent=2, sort_keys=True))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{max(0.0, seconds):.0f}s ago"


def _styled(value: str) -> Text:
    return Text(value, style=STATE_STYLES.get(value, ""))


# -- devices ------------------------------------------------------------------------------------
def _devices_table(devices: list[Device], now: float, plain: bool) -> Table:
    table = Table(box=None if plain else box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("DEVICE", "STATE", "LAST SEEN", "AGENT", "MODELS", "OUTBOX", "LAST UPDATE"):
        table.add_column(column, justify="right" if column == "OUTBOX" else "left")
    for d in devices:
        state = "unknown" if d.online is None else "online" if d.online else "offline"
        models = ",".join(f"{name}@{version}" for name, version in sorted((d.models or {}).items()))
        depth = d.outbox_depth
        table.add_row(
            Text(d.id),
            _styled(state),
            _age(now - d.last_seen),
            Text(d.agent_version or "-"),
            Text(models or "-"),
            "-" if depth is None else str(depth),
            Text(d.update_summary or "-"),
        )
    return table


def _devices_view(client: ConsoleClient, plain: bool) -> RenderableType:
    try:
        return _devices_table(client.devices(), time.time(), plain)
    except TRANSIENT as exc:
        return Text(f"{_when(time.time())} {exc.message} (retrying)", style="red")


@app.command("devices")
def devices_command(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the table until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> int:
    """List devices: online state, last seen, agent version, models, outbox depth (latest telemetry),
    last model update (a refused update shows its reason's code; --json has the whole reason)."""
    client, out = _client(ctx), _console()
    if as_json and watch:
        raise typer.BadParameter("--json and --watch do not go together", param_hint="--json")
    if as_json:
        _json(
            out,
            [
                d.model_dump(mode="json")
                | {"outbox_depth": d.outbox_depth, "last_update_summary": d.update_summary}
                for d in client.devices()
            ],
        )
        return EXIT_OK
    plain = not out.is_terminal
    if not watch:
        out.print(_devices_table(client.devices(), time.time(), plain))
        return EXIT_OK
    try:
        if plain:  # a fresh table per refresh, separated by a blank line
            while True:
                out.print(_devices_view(client, plain))
                _emit(out, "")
                time.sleep(interval)
        with Live(_devices_view(client, plain), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_devices_view(client, plain), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK


# -- on-device benchmarks -------------------------------------------------------------------------
BENCH_COLUMNS = ("DEVICE", "MODEL", "VERSION", "BATCH", "THREADS", "P50 MS", "P99 MS", "ROWS/S", "INFER P50",
                 "MEMORY MB", "MEASURED")  # fmt: skip


def _bench_table(reports: list[BenchReport], plain: bool) -> Table:
    table = Table(box=None if plain else box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in BENCH_COLUMNS:
        table.add_column(
            column, justify="left" if column in ("DEVICE", "MODEL", "VERSION", "MEASURED") else "right"
        )
    for b in reports:
        mem = "-" if b.figures.memory_mb is None else f"{b.figures.memory_mb:.1f}"
        for r in b.figures.rows:
            table.add_row(
                Text(b.device), Text(b.model), Text(b.version), str(r.batch), str(r.threads),
                f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput_rps:.1f}",
                f"{r.stages['infer'].p50_ms:.3f}", mem, _when(b.ts),
            )  # fmt: skip
    return table


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> int:
    """On-device benchmark figures (`edge-agent models bench`) per device and model: p50/p99, rows/s."""
    client, out = _client(ctx), _console()
    reports = client.bench(device, model)
    if as_json:
        _json(out, [r.model_dump(mode="json") for r in reports])
        return EXIT_OK
    if not reports:
        _emit(out, "no benchmark reported yet: run `edge-agent models bench NAME` on a device")
        return EXIT_OK
    out.print(_bench_table(reports, not out.is_terminal))
    return EXIT_OK


# -- results ------------------------------------------------------------------------------------
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RESULT_HEADER = f"{'CREATED':<19}  {'DEVICE':<20} {'MODEL':<20} {'LABEL':<16} {'SCORE':>6}  ID"


def parse_since(text: str, now: float) -> float:
    """Unix time, ISO date/time (local unless it has an offset), or an age: 90s, 15m, 2h, 7d."""
    text = text.strip()
    if m := _AGE.fullmatch(text):
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use a Unix time, an ISO date/time (2024-05-01T12:00) or an age (90s, 15m, 2h, 7d)",
            param_hint="--since",
        ) from None


def _result_line(r: Result) -> str:
    score = "-" if r.score is None else f"{r.score:.3f}"
    return (
        f"{_when(r.created):<19}  {r.device:<20} {r.model + '@' + r.version:<20} "
        f"{r.label or '-':<16} {score:>6}  {r.id}" + (f"  ({r.clock_note})" if r.clock_note else "")
    )


@app.command("results")
def results_command(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(help="Only results of this device.")] = None,
    model: Annotated[str | None, typer.Option(help="Only results of this model.")] = None,
    label: Annotated[str | None, typer.Option(help="Only results with this primary label.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created at or after: Unix time, ISO date/time, or an age (15m, 2h).")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="How many results (the backlog with --follow).")
    ] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Next page: the cursor printed after the previous one.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new results until Ctrl-C.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (JSON lines with --follow).")] = False,
) -> int:
    """List stored results, newest first; --follow tails them, oldest first, as they arrive."""
    client, out = _client(ctx), _console()
    filters = ResultFilter(device, model, label, None if since is None else parse_since(since, time.time()))
    if follow:
        if not as_json:
            _emit(out, RESULT_HEADER)
        try:
            for r in client.tail_results(filters, backlog=limit):
                _emit(out, json.dumps(r.model_dump(mode="json")) if as_json else _result_line(r))
        except KeyboardInterrupt:
            return EXIT_OK
    page = client.results(filters, limit, cursor)
    if as_json:
        _json(
            out, {"results": [r.model_dump(mode="json") for r in page.items], "next_cursor": page.next_cursor}
        )
        return EXIT_OK
    _emit(out, RESULT_HEADER)
    for r in page.items:
        _emit(out, _result_line(r))
    if page.next_cursor:
        _emit(_console(stderr=True), f"more: --cursor {page.next_cursor}")
    return EXIT_OK


# -- commands -----------------------------------------------------------------------------------
def parse_command_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` gives a string, ``key:=value`` a JSON value (``n:=3``, ``on:=true``)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        raw_json = key.endswith(":")
        key = key.removesuffix(":")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: write key=value or key:=JSON", param_hint="ARGS")
        if key in args:
            raise typer.BadParameter(f"{key!r} is given twice", param_hint="ARGS")
        try:
            args[key] = json.loads(value) if raw_json else value
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: {value!r} is not JSON", param_hint="ARGS") from None
    return args


WaitOption = Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for the device's reply.")]


@app.command("send")
def send_command(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id.", show_default=False)],
    command: Annotated[CommandName, typer.Argument(help="What the device should do.", show_default=False)],
    args: Annotated[
        list[str] | None,
        typer.Argument(help="Arguments: key=value (string) or key:=JSON.", show_default=False),
    ] = None,
    wait: WaitOption = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole reply as JSON.")] = False,
) -> int:
    """Send a command to a device, wait for its reply and print it; non-zero exit on an error reply."""
    client, out = _client(ctx), _console()
    reply = client.send(device, command, parse_command_args(args or []), wait)
    if as_json:
        _json(out, reply.model_dump(mode="json"))
    elif reply.ok:
        _json(out, reply.result or {})
    reply.raise_for_error()
    return EXIT_OK


@app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id.", show_default=False)],
    model: Annotated[str, typer.Argument(help="Model to roll back.", show_default=False)],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Older version to go back to (default: the one it ran before)."),
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the device to report.")
    ] = 60.0,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between progress checks.")] = 1.0,
) -> int:
    """Take a device back to an older model version: new update metadata, signed by the cloud and marked
    rollback (devices refuse a local switch once signed updates are configured)."""
    client, out = _client(ctx), _console()
    deployment_id, was, target = client.rollback(device, model, version)
    _emit(out, f"deployment {deployment_id}: {model} {target} (signed rollback from {was})")
    final = list(client.watch_deployment(deployment_id, poll_s=poll, timeout_s=wait))[-1]
    row = next((r for r in final.devices if r.device == device), None)
    if row is not None and row.state == "active":
        _emit(out, f"{device}: {model} rolled back to {target} (was {was})")
        return EXIT_OK
    state, reason = (row.state, row.reason) if row else ("unknown", None)
    _emit(_console(stderr=True), f"{PROG}: {device} {state}: {reason or 'no reason given'}")
    return EXIT_ERROR


# -- staged rollouts ------------------------------------------------------------------------------
rollout_app = typer.Typer(help="Staged rollouts: start one, show its waves, pause / resume / abort it.")
app.add_typer(rollout_app, name="rollout")


def _rollout_lines(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"rollout {doc['id']}: {doc['model']} {doc['version']} {doc['state']}"
        + (f" ({doc['reason']})" if doc.get("reason") else "")
    ]
    for i, wave in enumerate(doc["waves"], 1):
        lines.append(
            f"  wave {i} {wave['state']}" + (f": {wave['decision']}" if wave.get("decision") else "")
        )
        states = wave.get("device_states") or {}
        for device in wave["devices"]:
            f = (wave.get("figures") or {}).get(device) or {}
            agreement = "-" if f.get("agreement") is None else f"{f['agreement']:.3f}"
            state = (states.get(device) or {}).get("state", "-")
            lines.append(
                f"    {device:<20} {state:<12} samples {f.get('samples', '-'):<6} agreement {agreement}"
            )
    return lines


@rollout_app.command("start")
def rollout_start(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
    version: Annotated[str, typer.Argument(help="Published version.", show_default=False)],
    to: Annotated[
        str | None, typer.Option("--to", help="Comma-separated devices (default: every device).")
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(
            "--groups", help="One wave per rollout group, comma-separated, in order ('*': the rest)."
        ),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(min=0, max=1, help="Shadow agreement each device needs.")
    ] = 0.95,
    min_samples: Annotated[int, typer.Option(min=1, help="Shadow samples each device needs.")] = 20,
    max_latency_ratio: Annotated[
        float, typer.Option(min=0.01, help="Candidate / active latency at most.")
    ] = 2.0,
) -> int:
    """Start a staged rollout: waves of 1 device, 10 %, 50 %, all; halts by itself on a breach."""
    devices = [d.strip() for d in to.split(",") if d.strip()] if to else None
    waves_by = [g.strip() for g in groups.split(",") if g.strip()] if groups else None
    thresholds = {
        "min_agreement": min_agreement,
        "min_samples": min_samples,
        "max_latency_ratio": max_latency_ratio,
    }
    doc = _client(ctx).start_rollout(model, version, devices=devices, groups=waves_by, thresholds=thresholds)
    for line in _rollout_lines(doc):
        _emit(_console(), line)
    return EXIT_OK


@rollout_app.command("show")
def rollout_show(
    ctx: typer.Context,
    rollout_id: Annotated[str | None, typer.Argument(help="A rollout id (default: list them).")] = None,
) -> int:
    """Show a rollout's waves, per-device state and shadow figures; or list recent rollouts."""
    client, out = _client(ctx), _console()
    if rollout_id is None:
        for doc in client.rollouts():
            _emit(
                out,
                f"{doc['id']}  {doc['model']} {doc['version']}  {doc['state']}  {doc.get('reason') or ''}",
            )
        return EXIT_OK
    for line in _rollout_lines(client.rollout(rollout_id)):
        _emit(out, line)
    return EXIT_OK


def _act(ctx: typer.Context, rollout_id: str, action: str) -> int:
    doc = _client(ctx).act_on_rollout(rollout_id, action)
    _emit(_console(), f"rollout {doc['id']}: {doc['state']} ({doc.get('reason') or ''})")
    return EXIT_OK


@rollout_app.command("pause")
def rollout_pause(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> int:
    """Pause a running rollout (the wave in progress stays as it is)."""
    return _act(ctx, rollout_id, "pause")


@rollout_app.command("resume")
def rollout_resume(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> int:
    """Resume a paused rollout."""
    return _act(ctx, rollout_id, "resume")


@rollout_app.command("abort")
def rollout_abort(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> int:
    """Abort a rollout; the wave in progress is rolled back to each device's previous version."""
    return _act(ctx, rollout_id, "abort")


# -- deployments ----------------------------------------------------------------------------------
def _plain_rollout(out: Console, snapshots: Iterator[Deployment]) -> Deployment:
    """One line per change of a device's state or progress."""
    shown: dict[str, str] = {}
    last: Deployment | None = None
    for last in snapshots:
        for r in last.devices:
            line = " ".join(
                part
                for part in (
                    r.device,
                    r.state,
                    "" if r.progress is None else f"{r.progress:.0%}",
                    f"({r.reason})" if r.reason else "",
                )
                if part
            )
            if shown.get(r.device) != line:
                shown[r.device] = line
                _emit(out, line)
    if last is None:  # the generator yields at least once or raises
        raise CloudSyncError("no deployment snapshot")
    return last


def _live_rollout(out: Console, snapshots: Iterator[Deployment]) -> Deployment:
    columns = (
        TextColumn("{task.fields[device]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
    )
    tasks: dict[str, TaskID] = {}
    last: Deployment | None = None
    with Progress(*columns, console=out) as progress:
        for last in snapshots:
            for r in last.devices:
                if r.device not in tasks:
                    tasks[r.device] = progress.add_task(r.device, total=100, device=r.device, state="")
                style = STATE_STYLES.get(r.state, "")
                state = f"[{style}]{r.state}[/]" if style else r.state
                progress.update(tasks[r.device], state=state + (f" {escape(r.reason)}" if r.reason else ""))
                pct = 100.0 if r.state == "active" else None if r.progress is None else r.progress * 100
                if pct is not None:  # else the bar stays where it was
                    progress.update(tasks[r.device], completed=pct)
    if last is None:
        raise CloudSyncError("no deployment snapshot")
    return last


@app.command("deploy")
def deploy_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
    version: Annotated[str, typer.Argument(help="Model version (signed and published).", show_default=False)],
    to: Annotated[str | None, typer.Option("--to", help="Comma-separated device ids.")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every device the cloud knows.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for every device to finish.")
    ] = 600.0,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between progress checks.")] = 1.0,
) -> int:
    """Roll a model version out and show each device's progress until it is active or failed."""
    if (to is None) == (not all_devices):
        raise typer.BadParameter("name the devices with --to DEV1,DEV2 or pass --all (one of the two)")
    devices = None if to is None else [d.strip() for d in to.split(",") if d.strip()]
    client, out = _client(ctx), _console()
    deployment_id = client.deploy(model, version, devices, all_devices=all_devices)
    _emit(out, f"deployment {deployment_id}: {model} {version}")
    snapshots = client.watch_deployment(deployment_id, poll_s=poll, timeout_s=timeout)
    final = _plain_rollout(out, snapshots) if not out.is_terminal else _live_rollout(out, snapshots)
    active = sum(r.state == "active" for r in final.devices)
    _emit(out, f"{active} of {len(final.devices)} devices active")
    if not final.failed:
        return EXIT_OK
    err = _console(stderr=True)
    for r in final.failed:
        _emit(err, f"{PROG}: {r.device} {r.state}: {r.reason or 'no reason given'}")
    return EXIT_ERROR


# -- the program --------------------------------------------------------------------------------
@app.callback()
def _settings(
    ctx: typer.Context,
    api: Annotated[
        str, typer.Option("--api", envvar=ENV_API, help="Base URL of the cloud API.")
    ] = DEFAULT_API,
    token: Annotated[
        str | None, typer.Option("--token", envvar=ENV_TOKEN, help="API bearer token.", show_default=False)
    ] = None,
) -> None:
    ctx.obj = _Settings(api, token)


def _fail(message: str) -> None:
    _emit(_console(stderr=True), f"{PROG}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console; errors become one line on stderr and an exit code (the table above)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        rv = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except typer.TyperException as exc:  # click's errors (typer vendors click): usage errors exit 2
        ctx = getattr(exc, "ctx", None)
        where = (
            f" (see '{ctx.command_path} --help')" if ctx is not None and exc.exit_code == EXIT_USAGE else ""
        )
        _fail(exc.format_message().replace("\n", " ") + where)
        return exc.exit_code
    except typer.Abort:
        return EXIT_INTERRUPTED
    except CloudSyncError as exc:
        hint = next((f" ({text})" for cls, text in HINTS if isinstance(exc, cls)), "")
        _fail(exc.message + hint)
        return exit_code(exc)
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
