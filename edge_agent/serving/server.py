"""`edge-agent serve`: run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import json
import logging
import os

import uvicorn

from edge_agent.config import AgentConfig, with_overrides
from edge_agent.serving.app import create_app

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 3


def config_to_env(config: AgentConfig) -> dict[str, str]:
    """The validated config as EDGE_* variables, for worker processes."""
    env: dict[str, str] = {}
    from edge_agent.config import SECTIONS

    for name, value in config.model_dump(mode="json").items():
        if value is None:
            continue
        if name in SECTIONS:
            for field, inner in value.items():
                if inner is not None:
                    text = inner if isinstance(inner, str) else json.dumps(inner)
                    env[f"EDGE_{name.upper()}__{field.upper()}"] = text
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if name == "api_token" and config.api_token is not None:
            text = config.api_token.get_secret_value()
        env["EDGE_" + name.upper()] = text
    return env


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``serve`` role."""
    serve(with_overrides(config, host=args.host, port=args.port, workers=args.workers))
    return 0


def serve(config: AgentConfig) -> None:
    common = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level.lower(),
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "access_log": False,
        "http": "httptools",
        "loop": "uvloop",
    }
    if config.workers == 1:
        uvicorn.run(create_app(config), **common)  # type: ignore[arg-type]
        return
    os.environ.pop("EDGE_CONFIG", None)
    os.environ.update(config_to_env(config))
    uvicorn.run("edge_agent.serving.app:app_from_env", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]
