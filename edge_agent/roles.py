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
from edge_agent.errors import ConfigError


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
        Role(
            "worker",
            "edge_agent.workers.worker",
            "Run queued asynchronous jobs (woken when a job is queued; no polling).",
            (
                Arg(("--id",), "worker id (default: hostname-pid)"),
                Arg(("--once",), "drain the queue, then exit", {"action": "store_true"}),
            ),
            "asynchronous, sync-async (slow half)",
        ),
        Role(
            "batch",
            "edge_agent.workers.batch",
            "Predict registered batch items on a schedule (interval or cron), in parallel.",
            (
                Arg(("--now",), "run the pending items once, then exit", {"action": "store_true"}),
                Arg(("--progress",), "show a progress bar", {"action": "store_true"}),
            ),
            "batch",
        ),
        Role(
            "prep",
            "edge_agent.services.prep",
            "Run the preprocessing service (decode, resize, normalise) of the prep-pred pattern.",
            (Arg(("--port",), "port (default: services.prep_port)", {"type": int}),),
            "prep-pred (prep half)",
        ),
        Role(
            "model",
            "edge_agent.services.model_server",
            "Serve one model as its own small process (model@NAME).",
            (
                Arg(("name",), "model name"),
                Arg(("--port",), "port (default: from services.models[NAME])", {"type": int}),
            ),
            "horizontal microservice, prep-pred (pred half)",
        ),
        Role(
            "camera",
            "edge_agent.workers.camera",
            "Read camera frames (V4L2, RTSP/HTTP URL or video file), infer, record results.",
            (
                Arg(("--source",), "override camera.source"),
                Arg(("--max-frames",), "stop after this many inferred frames", {"type": int}),
            ),
            "edge AI",
        ),
        Role(
            "sync",
            "edge_agent.sync.agent",
            "MQTT fleet link: results out (outbox, end-to-end acks), commands and model updates in.",
            (
                Arg(("--broker-host",), "override sync.broker_host"),
                Arg(("--broker-port",), "override sync.broker_port", {"type": int}),
                Arg(("--drain",), "exit once the outbox is empty and acknowledged", {"action": "store_true"}),
            ),
            "fleet link",
        ),
        Role(
            "up",
            "edge_agent.supervisor",
            "Start the configured roles as child processes, restart crashed ones, stop all on SIGTERM.",
            (
                Arg(
                    ("--profile",),
                    "multi (one process per role) or all-in-one",
                    {"choices": ["multi", "all-in-one"]},
                ),
            ),
        ),
    )
}


def role_command(spec: str) -> list[str]:
    """An ``up.roles`` entry -> its command: 'worker' -> ['worker'], 'model@iris' -> ['model', 'iris']."""
    name, _, arg = spec.partition("@")
    if name not in ROLES or name == "up":
        raise ConfigError([f"up.roles: unknown role {spec!r}; known: {sorted(set(ROLES) - {'up'})}"])
    if name == "model" and not arg:
        raise ConfigError(["up.roles: the model role is written model@NAME"])
    return [name, arg] if arg else [name]


def add_role_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register one sub-command per role on the CLI's sub-parsers."""
    for role in ROLES.values():

        def run(config: AgentConfig, args: argparse.Namespace, role: Role = role) -> int:
            return role.runner()(config, args)

        sp = add(sub, role.name, run, role.help)
        for arg in role.args:
            sp.add_argument(*arg.flags, help=arg.help, **arg.kwargs)
