"""Staged rollouts, ``edge-console rollout start|show|pause|resume|abort``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud_sync.console._common import (
    EXIT_OK,
    client_of,
    emit,
    make_console,
)

# -- staged rollouts ------------------------------------------------------------------------------
rollout_app = typer.Typer(help="Staged rollouts: start one, show its waves, pause / resume / abort it.")


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
    doc = client_of(ctx).start_rollout(
        model, version, devices=devices, groups=waves_by, thresholds=thresholds
    )
    for line in _rollout_lines(doc):
        emit(make_console(), line)
    return EXIT_OK


@rollout_app.command("show")
def rollout_show(
    ctx: typer.Context,
    rollout_id: Annotated[str | None, typer.Argument(help="A rollout id (default: list them).")] = None,
) -> int:
    """Show a rollout's waves, per-device state and shadow figures; or list recent rollouts."""
    client, out = client_of(ctx), make_console()
    if rollout_id is None:
        for doc in client.rollouts():
            emit(
                out,
                f"{doc['id']}  {doc['model']} {doc['version']}  {doc['state']}  {doc.get('reason') or ''}",
            )
        return EXIT_OK
    for line in _rollout_lines(client.rollout(rollout_id)):
        emit(out, line)
    return EXIT_OK


def _act(ctx: typer.Context, rollout_id: str, action: str) -> int:
    doc = client_of(ctx).act_on_rollout(rollout_id, action)
    emit(make_console(), f"rollout {doc['id']}: {doc['state']} ({doc.get('reason') or ''})")
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
