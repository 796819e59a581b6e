"""`edge-agent serve`: run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from edge_agent.config import AgentConfig, config_to_env, with_overrides
from edge_agent.serving.app import create_app

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 3


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
        # The gateway never reads the client address; uvicorn's X-Forwarded-* rewriting layer
        # would scan every request's headers for nothing.
        "proxy_headers": False,
        # No "server: uvicorn" header on every answer: a header less to check and write, and the
        # server software is not announced (the Date header stays: HTTP/1.1 asks for it).
        "server_header": False,
        "http": "httptools",
        "loop": "uvloop",
    }
    if config.workers == 1:
        uvicorn.run(create_app(config), **common)  # type: ignore[arg-type]
        return
    os.environ.pop("EDGE_CONFIG", None)
    os.environ.update(config_to_env(config))
    uvicorn.run("edge_agent.serving.app:app_from_env", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]
