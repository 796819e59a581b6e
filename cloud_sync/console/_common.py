"""What every ``edge-console`` command shares: exit codes, settings, the client, output helpers.

Output is rich on a terminal and plain parseable text otherwise (no wrapping, no colour).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import typer
from rich.console import Console
from rich.text import Text

from cloud_sync.console.client import (
    ApiUnreachable,
    CommandTimeout,
    ConsoleClient,
    DeploymentTimeout,
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


def exit_code(exc: CloudSyncError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


# -- output ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The global options (``--api``, ``--token``), kept on the root context."""

    api: str
    token: str | None


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, width=PLAIN_WIDTH)


def client_of(ctx: typer.Context) -> ConsoleClient:
    settings: Settings = ctx.find_root().obj
    return ctx.with_resource(ConsoleClient(settings.api, settings.token))


def emit(out: Console, line: str | Text) -> None:
    out.print(line, markup=False, soft_wrap=True)
    out.file.flush()


def emit_json(out: Console, data: Any) -> None:
    if out.is_terminal:
        out.print_json(data=data)
    else:
        emit(out, json.dumps(data, indent=2, sort_keys=True))


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{max(0.0, seconds):.0f}s ago"


def styled(value: str) -> Text:
    return Text(value, style=STATE_STYLES.get(value, ""))
