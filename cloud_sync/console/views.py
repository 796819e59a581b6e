"""Read-only views of the fleet: ``devices`` (``--watch``), ``bench``, ``results`` (``--follow``)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Annotated

import typer
from rich import box
from rich.console import RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cloud_sync.console._common import (
    EXIT_OK,
    TRANSIENT,
    age,
    client_of,
    emit,
    emit_json,
    make_console,
    styled,
    when,
)
from cloud_sync.console.client import BenchReport, ConsoleClient, Device, Result, ResultFilter


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
            styled(state),
            age(now - d.last_seen),
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
        return Text(f"{when(time.time())} {exc.message} (retrying)", style="red")


def devices_command(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the table until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> int:
    """List devices: online state, last seen, agent version, models, outbox depth (latest telemetry),
    last model update (a refused update shows its reason's code; --json has the whole reason)."""
    client, out = client_of(ctx), make_console()
    if as_json and watch:
        raise typer.BadParameter("--json and --watch do not go together", param_hint="--json")
    if as_json:
        emit_json(
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
                emit(out, "")
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
                f"{r.stages['infer'].p50_ms:.3f}", mem, when(b.ts),
            )  # fmt: skip
    return table


def bench_command(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> int:
    """On-device benchmark figures (`edge-agent models bench`) per device and model: p50/p99, rows/s."""
    client, out = client_of(ctx), make_console()
    reports = client.bench(device, model)
    if as_json:
        emit_json(out, [r.model_dump(mode="json") for r in reports])
        return EXIT_OK
    if not reports:
        emit(out, "no benchmark reported yet: run `edge-agent models bench NAME` on a device")
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
        f"{when(r.created):<19}  {r.device:<20} {r.model + '@' + r.version:<20} "
        f"{r.label or '-':<16} {score:>6}  {r.id}" + (f"  ({r.clock_note})" if r.clock_note else "")
    )


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
    client, out = client_of(ctx), make_console()
    filters = ResultFilter(device, model, label, None if since is None else parse_since(since, time.time()))
    if follow:
        if not as_json:
            emit(out, RESULT_HEADER)
        try:
            for r in client.tail_results(filters, backlog=limit):
                emit(out, json.dumps(r.model_dump(mode="json")) if as_json else _result_line(r))
        except KeyboardInterrupt:
            return EXIT_OK
    page = client.results(filters, limit, cursor)
    if as_json:
        emit_json(
            out, {"results": [r.model_dump(mode="json") for r in page.items], "next_cursor": page.next_cursor}
        )
        return EXIT_OK
    emit(out, RESULT_HEADER)
    for r in page.items:
        emit(out, _result_line(r))
    if page.next_cursor:
        emit(make_console(stderr=True), f"more: --cursor {page.next_cursor}")
    return EXIT_OK
