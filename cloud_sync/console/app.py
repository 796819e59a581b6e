"""``edge-console``: the operator's desktop companion to the cloud API.

Each command is a thin wrapper over one :class:`ConsoleClient` call: the read-only
views in :mod:`~cloud_sync.console.views`, the commands that change a device in
:mod:`~cloud_sync.console.commands`, staged rollouts in
:mod:`~cloud_sync.console.rollouts`; they alone render (rich on a terminal, plain
parseable text otherwise), and ``main`` here alone decides exit codes::

    python -m cloud_sync.console.app devices --watch
    python -m cloud_sync.console.app send pi-kitchen ping
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from cloud_sync.console import commands, rollouts, views
from cloud_sync.console._common import (
    ENV_API,
    ENV_TOKEN,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    HINTS,
    PROG,
    Settings,
    emit,
    exit_code,
    make_console,
)
from cloud_sync.console.client import DEFAULT_API
from cloud_sync.console.commands import parse_command_args
from cloud_sync.console.views import parse_since
from cloud_sync.errors import CloudSyncError

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "app",
    "main",
    "parse_command_args",
    "parse_since",
]


app = typer.Typer(
    name=PROG,
    help="Drive the edge fleet through the cloud API: devices, results, commands, deployments.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


# The commands, in the order of --help; each is one function of a module of its kind.
COMMANDS = (
    ("devices", views.devices_command),
    ("bench", views.bench_command),
    ("results", views.results_command),
    ("send", commands.send_command),
    ("rollback", commands.rollback_command),
    ("deploy", commands.deploy_command),
)
for _name, _function in COMMANDS:
    app.command(_name)(_function)
app.add_typer(rollouts.rollout_app, name="rollout")


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
    ctx.obj = Settings(api, token)


def _fail(message: str) -> None:
    emit(make_console(stderr=True), f"{PROG}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console; errors become one line on stderr and an exit code (``EXIT_CODES``)."""
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
