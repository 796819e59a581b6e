"""`edge-agent serve`: run the gateway under uvicorn."""

from __future__ import annotations

import json
import logging
import os

import uvicorn

from edge_agent.config import AgentConfig
from edge_agent.serving.app import create_app

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 3


def config_to_env(config: AgentConfig) -> dict[str, str]:
    """The validated config as EDGE_* variables, for worker processes."""
    env: dict[str, str] = {}
    for name, value in config.model_dump(mode="json").items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if name == "api_token" and config.api_token is not None:
            text = config.api_token.get_secret_value()
        env["EDGE_" + name.upper()] = text
    return env


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
