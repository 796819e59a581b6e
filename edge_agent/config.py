"""AgentConfig: a TOML file plus ``EDGE_*`` environment variables, validated once.

Precedence: defaults < config file < environment. Every problem is reported at
once (a misspelt ``EDGE_*`` variable included), so an operator fixes a broken
config in one round trip instead of one error per restart.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import ConfigError

ENV_PREFIX = "EDGE_"
ENV_CONFIG_FILE = "EDGE_CONFIG"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_model_dir() -> Path:
    bundled = PROJECT_ROOT / "models"
    return bundled if bundled.is_dir() else Path("/var/lib/edge-agent/models")


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-agent"


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(
        default_factory=lambda: os.environ.get("BALENA_DEVICE_UUID") or socket.gethostname(),
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Identity of this device in the fleet (default: BALENA_DEVICE_UUID, else hostname).",
    )
    model_dir: Path = Field(default_factory=_default_model_dir, description="Root of the model store.")
    data_dir: Path = Field(
        default_factory=_default_data_dir, description="Writable state: store pointers, SQLite file, caches."
    )
    intra_op_threads: int = Field(default=1, ge=1, le=64, description="Threads inside one inference call.")
    inter_op_threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime inter-op threads.")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Images with more pixels are refused before decoding."
    )
    max_batch_rows: int = Field(default=1024, ge=1, description="Largest batch one request may send.")
    log_level: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Logging level."
    )

    @property
    def store_state_path(self) -> Path:
        return self.data_dir / "store-state.json"


ENV_VARS = {ENV_PREFIX + name.upper(): name for name in AgentConfig.model_fields}


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the config; ConfigError lists every problem found."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    path = path or (Path(env[ENV_CONFIG_FILE]) if env.get(ENV_CONFIG_FILE) else None)
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()))
        except OSError as exc:
            problems.append(f"config file {path}: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {path}: not valid TOML: {exc}")
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_CONFIG_FILE:
            continue
        if key in ENV_VARS:
            values[ENV_VARS[key]] = raw
        else:
            problems.append(f"unknown environment variable {key}; known: {', '.join(sorted(ENV_VARS))}")
    try:
        config = AgentConfig.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            problems.append(f"{field}: {err['msg']} (got {err.get('input')!r})")
        config = None
    if problems or config is None:
        raise ConfigError(problems)
    return config
