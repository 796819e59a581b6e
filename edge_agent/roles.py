"""The table of process roles. Every role is a command, ``edge-agent <role>``.

Adding a role = one module exposing ``run(config, args) -> int`` + one row
here. The table declares the role's arguments so that building the command
line never imports a role's module (and its heavy libraries): a role imports
only what it needs, when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from edge_agent.config import AgentConfig


@dataclass(frozen=True, slots=True)
class Arg:
    flags: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    module: str
    help: str
    args: tuple[Arg, ...] = ()
    patterns: str = ""

    def runner(self) -> Callable[[AgentConfig, argparse.Namespace], int]:
        return cast(
            Callable[[AgentConfig, argparse.Namespace], int], importlib.import_module(self.module).run
        )


ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "serve",
            "edge_agent.serving.server",
            "Run the local HTTP gateway (web single, synchronous, v1 and v2 APIs).",
            (
                Arg(("--host",), "bind address (EDGE_HOST; default 127.0.0.1; off loopback needs a token)"),
                Arg(("--port",), "port (EDGE_PORT; default 8000)", {"type": int}),
                Arg(
                    ("--workers",),
                    "gateway processes sharing the port (EDGE_WORKERS; default 1)",
                    {"type": int},
                ),
            ),
            "web single, synchronous, prediction cache, data cache, v2 protocol",
        ),
    )
}


def add_role_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register one sub-command per role on the CLI's sub-parsers."""
    for role in ROLES.values():

        def run(config: AgentConfig, args: argparse.Namespace, role: Role = role) -> int:
            return role.runner()(config, args)

        sp = add(sub, role.name, run, role.help)
        for arg in role.args:
            sp.add_argument(*arg.flags, help=arg.help, **arg.kwargs)
