"""Commands that change a device: ``send`` (a command, then its reply), ``rollback``, ``deploy``
(with each device's progress until it is active or failed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from cloud_sync.console._common import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    STATE_STYLES,
    client_of,
    emit,
    emit_json,
    make_console,
)
from cloud_sync.console.client import Deployment
from cloud_sync.errors import CloudSyncError
from edge_agent.sync.protocol import CommandName


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
    client, out = client_of(ctx), make_console()
    reply = client.send(device, command, parse_command_args(args or []), wait)
    if as_json:
        emit_json(out, reply.model_dump(mode="json"))
    elif reply.ok:
        emit_json(out, reply.result or {})
    reply.raise_for_error()
    return EXIT_OK


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
    client, out = client_of(ctx), make_console()
    deployment_id, was, target = client.rollback(device, model, version)
    emit(out, f"deployment {deployment_id}: {model} {target} (signed rollback from {was})")
    final = list(client.watch_deployment(deployment_id, poll_s=poll, timeout_s=wait))[-1]
    row = next((r for r in final.devices if r.device == device), None)
    if row is not None and row.state == "active":
        emit(out, f"{device}: {model} rolled back to {target} (was {was})")
        return EXIT_OK
    state, reason = (row.state, row.reason) if row else ("unknown", None)
    emit(make_console(stderr=True), f"{PROG}: {device} {state}: {reason or 'no reason given'}")
    return EXIT_ERROR


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
                emit(out, line)
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
    client, out = client_of(ctx), make_console()
    deployment_id = client.deploy(model, version, devices, all_devices=all_devices)
    emit(out, f"deployment {deployment_id}: {model} {version}")
    snapshots = client.watch_deployment(deployment_id, poll_s=poll, timeout_s=timeout)
    final = _plain_rollout(out, snapshots) if not out.is_terminal else _live_rollout(out, snapshots)
    active = sum(r.state == "active" for r in final.devices)
    emit(out, f"{active} of {len(final.devices)} devices active")
    if not final.failed:
        return EXIT_OK
    err = make_console(stderr=True)
    for r in final.failed:
        emit(err, f"{PROG}: {r.device} {r.state}: {r.reason or 'no reason given'}")
    return EXIT_ERROR
