"""Settings of the ``sync`` role (the device end of the fleet link).

``SyncConfig`` is ``AgentConfig.sync`` (TOML section ``[sync]``,
``EDGE_SYNC__<FIELD>`` in the environment), loaded with the rest of the
configuration by ``edge_agent.config.load_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from edge_agent.envconfig import describe
from edge_agent.errors import ConfigError

ENV_PREFIX = "EDGE_SYNC__"

# Settings a `set_config` command may change while the role runs; every other one needs a restart.
RUNTIME_SETTINGS = frozenset({"telemetry_interval_s", "batch_size", "ack_timeout_s", "max_inflight_messages"})


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_host: str = Field(default="localhost", min_length=1, description="MQTT broker host name.")
    broker_port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker port (8883 for TLS).")
    protocol: Literal["3.1.1", "5"] = Field(default="5", description="MQTT protocol version.")
    username: str | None = Field(default=None, description="Broker user name (default: none).")
    password: SecretStr | None = Field(default=None, description="Broker password; never logged.")
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA bundle for TLS (default: the system's).")
    cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(default=None, description="Private key of cert_file.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    reconnect_min_s: int = Field(default=1, ge=1, le=60, description="First reconnect delay (doubles).")
    reconnect_max_s: int = Field(default=60, ge=1, le=3600, description="Longest reconnect delay.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="MQTT 5: how long the broker keeps the session offline."
    )
    batch_size: int = Field(
        default=100, ge=1, le=500, description="Results per `results` message (1: one message per result)."
    )
    max_inflight_messages: int = Field(
        default=10, ge=1, le=10_000, description="Results messages sent and not yet acknowledged, at most."
    )
    ack_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="An unacknowledged result is sent again after this."
    )
    outbox_max_rows: int = Field(default=100_000, ge=1, description="Most results waiting in the outbox.")
    on_full: Literal["drop_oldest", "refuse_new"] = Field(
        default="drop_oldest", description="What a full outbox gives up: its oldest or its newest entries."
    )
    poll_interval_s: float = Field(
        default=0.2, gt=0, le=60, description="How often the outbox is checked for new results."
    )
    telemetry_interval_s: float = Field(default=60.0, ge=1, le=86_400, description="Telemetry period.")
    command_memory_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="How long executed command ids are remembered."
    )
    trusted_keys: Path | None = Field(
        default=None, description="PEM file of the Ed25519 public keys model updates must be signed with."
    )
    artifact_base_url: str | None = Field(
        default=None, description="Base URL of the cloud API for relative artifact URLs."
    )
    max_artifact_mb: int = Field(default=512, ge=1, le=65_536, description="Largest model archive accepted.")
    download_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Timeout of one HTTP read.")
    download_attempts: int = Field(default=3, ge=1, le=100, description="Tries of one artifact download.")

    @model_validator(mode="after")
    def _consistent(self) -> SyncConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be less than reconnect_min_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.cert_file or self.ca_file) and not self.tls:
            raise ValueError("ca_file / cert_file are set but tls is off")
        return self


def with_changes(config: SyncConfig, changes: Mapping[str, Any]) -> SyncConfig:
    """Re-validated copy; ConfigError names the bad values."""
    try:
        return SyncConfig.model_validate(config.model_dump() | dict(changes))
    except ValidationError as exc:
        raise ConfigError(describe(exc, {"password"})) from None
