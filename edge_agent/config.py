"""AgentConfig: a TOML file plus ``EDGE_*`` environment variables, validated once.

Precedence: defaults < config file < environment. Every problem is reported at
once (a misspelt ``EDGE_*`` variable included), so an operator fixes a broken
config in one round trip instead of one error per restart. The reading and the
problem list are ``edge_agent/envconfig.py``, which ``cloud_sync.config`` uses too.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.access import off_loopback_problem
from edge_agent.envconfig import EnvLayout, describe, read_sources
from edge_agent.errors import ConfigError
from edge_agent.sync.settings import SyncConfig

ENV_PREFIX = "EDGE_"
ENV_CONFIG_FILE = "EDGE_CONFIG"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_model_dir() -> Path:
    bundled = PROJECT_ROOT / "models"
    return bundled if bundled.is_dir() else Path("/var/lib/edge-agent/models")


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-agent"


class BatchingOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(default=None, description="Turn dynamic batching on or off.")
    max_batch_size: int | None = Field(default=None, ge=1, le=4096, description="Rows per runtime call.")
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=1000, description="Wait for more rows.")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerConfig(_Section):
    lease_s: float = Field(default=30.0, gt=0, le=3600, description="A claimed job is retried after this.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Tries before a job is marked failed.")
    group: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Queued jobs one worker claims, runs and records together (one commit for all).",
    )
    group_window_s: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="After a wake-up, wait this long for more jobs to group (adds to their latency).",
    )


class BatchConfig(_Section):
    interval_s: float | None = Field(default=60.0, gt=0, description="Run pending items every N seconds.")
    cron: str | None = Field(default=None, description="Cron expression (5 fields); overrides interval_s.")
    timezone: str | None = Field(
        default=None, description="IANA time zone of the cron expression; unset: the device's local time."
    )
    parallelism: int = Field(default=2, ge=1, le=64, description="Chunks predicted at once (threads).")
    chunk: int = Field(default=32, ge=1, le=4096, description="Items claimed per chunk.")
    lease_s: float = Field(
        default=120.0, gt=0, le=86400, description="A claimed item is taken back after this."
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="Tries before an item is marked failed.")

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value:
            # lazy: the cron parser (cronsim) loads only where a cron is configured
            from edge_agent.workers.schedule import CronSchedule, ScheduleError

            try:
                CronSchedule.parse(value)
            except ScheduleError as exc:
                raise ValueError(exc.reason) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str | None) -> str | None:
        if value:
            from edge_agent.workers.schedule import zone  # lazy, as above

            zone(value)  # ValueError with the reason
        return value


class CacheConfig(_Section):
    prediction_enabled: bool = Field(default=True, description="Prediction cache on or off.")
    prediction_disabled_models: list[str] = Field(default_factory=list, description="Models never cached.")
    prediction_max_entries: int = Field(default=10_000, ge=1, description="Most cached predictions.")
    prediction_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Bytes of cached answers."
    )
    prediction_ttl_s: float = Field(
        default=3600.0, gt=0, description="Age after which an answer is recomputed."
    )
    data_max_bytes: int = Field(default=128 * 1024 * 1024, ge=1024, description="Bytes of cached tensors.")


class ServicesConfig(_Section):
    """Where the gateway finds the separate processes of prep-pred and microservice."""

    prep_url: str = Field(default="http://127.0.0.1:8010", description="Base URL of the prep role.")
    prep_port: int = Field(default=8010, ge=0, le=65535, description="Port the prep role listens on.")
    models: dict[str, str] = Field(
        default_factory=dict, description="model@NAME roles: model name -> base URL (port taken from it)."
    )
    microservice: list[str] = Field(
        default_factory=lambda: ["iris_setosa", "iris_versicolor", "iris_virginica"],
        description="One-vs-rest models the microservice pattern fans out to.",
    )
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="Per-call timeout of a fan-out.")
    weak_below: float = Field(default=0.5, ge=0, le=1, description="A winner scoring less is reported weak.")
    sync_async_fast: str = Field(default="digits_int8", description="Model answering at once (sync-async).")
    sync_async_accurate: str = Field(default="digits", description="Model answering later (sync-async).")


class CameraConfig(_Section):
    source: str | None = Field(
        default=None, description="V4L2 index (0), device path, RTSP/HTTP URL or file."
    )
    model: str = Field(default="face", description="Model run on each frame.")
    fps: float = Field(default=2.0, gt=0, le=1000, description="Frames inferred per second at most.")
    thumbnails: bool = Field(default=False, description="Store a small JPEG with each result.")
    commit_interval_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Frames' results are written together this often (0: each at once); "
        "a crash loses at most this much.",
    )
    loop: bool = Field(default=False, description="Restart a video file at its end.")
    realtime: bool = Field(
        default=True,
        description="Play a video file at its own frame rate, dropping stale frames as a camera would; "
        "false hands every frame to the model as fast as it runs.",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Detection models: keep only boxes with these labels (empty: every label).",
    )
    min_score: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Detection models: keep only boxes scoring at least this."
    )
    only_detections: bool = Field(
        default=False,
        description="Detection models: record a frame only when a box is left after the label/score filters.",
    )


class StorageConfig(_Section):
    """The device's SQLite file and the disk it lives on (see docs/operations.md)."""

    free_floor_mb: float = Field(
        default=64.0, ge=0, description="Free space under which caches and thumbnails stop being written."
    )
    free_reserve_mb: float = Field(
        default=16.0,
        ge=0,
        description="Below this much free space new work is refused (HTTP 507, camera stops recording).",
    )
    retention_days: float | None = Field(
        default=7.0,
        gt=0,
        description="Delivered results, finished jobs and batch items older than this are deleted "
        "(none: kept for ever). Undelivered results are never pruned.",
    )

    @property
    def floor_bytes(self) -> int:
        return int(self.free_floor_mb * 1024 * 1024)

    @property
    def reserve_bytes(self) -> int:
        return int(self.free_reserve_mb * 1024 * 1024)


class UpConfig(_Section):
    roles: list[str] = Field(
        default_factory=lambda: ["serve", "worker", "batch"], description="Roles `edge-agent up` starts."
    )
    profile: str = Field(
        default="multi", pattern=r"^(multi|all-in-one)$", description="multi: one process per role."
    )
    restart_backoff_s: float = Field(default=1.0, gt=0, le=60, description="First restart delay.")


class ShadowConfig(_Section):
    sample: float = Field(
        default=0.25, ge=0, le=1, description="Share of a model's live requests copied to its staged version."
    )
    max_per_s: float = Field(
        default=2.0,
        gt=0,
        le=1000,
        description="Shadow samples per second at most (the rest are counted).",
    )
    queue: int = Field(default=8, ge=1, le=1024, description="Samples waiting for the shadow thread at most.")
    report_every_s: float = Field(
        default=1.0, gt=0, le=3600, description="How often shadow figures are written for the sync role."
    )


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
    group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Rollout group of this device (e.g. canary), reported in its status; on balena set "
        "EDGE_GROUP as a device variable.",
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

    # -- gateway ------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Gateway bind address. Off loopback needs api_token.")
    port: int = Field(default=8000, ge=0, le=65535, description="Gateway port.")
    workers: int = Field(default=1, ge=1, le=16, description="Gateway processes sharing the port.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required on every non-health endpoint when set."
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body.")
    request_timeout_s: float = Field(default=10.0, gt=0, le=600, description="Deadline of one request.")
    default_model: str = Field(default="iris", description="Model behind the book-compatible endpoints.")
    batching: dict[str, BatchingOverride] = Field(
        default_factory=dict, description="Per-model batching overrides (else the manifest's)."
    )
    preload: bool = Field(default=True, description="Load and self-test every model at start.")

    # -- other roles (TOML sections; EDGE_<SECTION>__<FIELD> in the environment) ----------
    worker: WorkerConfig = Field(default_factory=WorkerConfig, description="Asynchronous worker role.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch role.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Prediction and data caches.")
    services: ServicesConfig = Field(default_factory=ServicesConfig, description="prep-pred, microservice.")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="Edge-AI camera role.")
    up: UpConfig = Field(default_factory=UpConfig, description="`edge-agent up` supervisor.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="SQLite file and its disk.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="MQTT fleet link (sync role).")
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig, description="Shadow evaluation of staged versions in the gateway."
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AgentConfig:
        problem = off_loopback_problem("host", self.host, self.api_token is not None, "EDGE_API_TOKEN")
        if problem:
            raise ValueError(problem)
        return self

    @property
    def store_state_path(self) -> Path:
        return self.data_dir / "store-state.json"


SECTIONS: dict[str, type[BaseModel]] = {
    "worker": WorkerConfig,
    "batch": BatchConfig,
    "cache": CacheConfig,
    "services": ServicesConfig,
    "camera": CameraConfig,
    "up": UpConfig,
    "storage": StorageConfig,
    "sync": SyncConfig,
    "shadow": ShadowConfig,
}
ENV_VARS = {ENV_PREFIX + name.upper(): name for name in AgentConfig.model_fields if name not in SECTIONS}
SECTION_ENV_VARS = {
    f"{ENV_PREFIX}{section.upper()}__{name.upper()}": (section, name)
    for section, model in SECTIONS.items()
    for name in model.model_fields
}
JSON_FIELDS = frozenset(
    {"batching", "prediction_disabled_models", "models", "microservice", "roles", "labels"}
)


ENV_LAYOUT = EnvLayout(
    prefix=ENV_PREFIX,
    config_file_var=ENV_CONFIG_FILE,
    variables={key: (name,) for key, name in ENV_VARS.items()}
    | {key: where for key, where in SECTION_ENV_VARS.items()},
    json_fields=JSON_FIELDS,
)
SECRET_FIELDS = frozenset({"api_token", "password"})  # top level and sync.password


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the config; ConfigError lists every problem found."""
    values, problems = read_sources(ENV_LAYOUT, path, os.environ if env is None else env)
    try:
        config = AgentConfig.model_validate(values)
    except ValidationError as exc:
        problems.extend(describe(exc, SECRET_FIELDS))
        host = values.get("host")
        token_set = bool(values.get("api_token"))
        problem = off_loopback_problem("host", host, token_set, "EDGE_API_TOKEN")
        if problem and not any(p.startswith(f"host {host!r}") for p in problems):
            problems.append(problem)  # the model validator did not run: say it anyway
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def with_overrides(config: AgentConfig, **updates: Any) -> AgentConfig:
    """Re-validate ``config`` with command-line overrides (None values ignored)."""
    values = config.model_dump() | {k: v for k, v in updates.items() if v is not None}
    try:
        return AgentConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, SECRET_FIELDS)) from None


def _env_text(value: Any, dumped: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return dumped if isinstance(dumped, str) else json.dumps(dumped)


def config_to_env(config: AgentConfig) -> dict[str, str]:
    """The validated config as ``EDGE_*`` variables (secrets included), for child processes."""
    env: dict[str, str] = {}
    dumped = config.model_dump(mode="json")
    for name in AgentConfig.model_fields:
        value = getattr(config, name)
        if name in SECTIONS:
            for field in SECTIONS[name].model_fields:
                inner = getattr(value, field)
                key = f"{ENV_PREFIX}{name.upper()}__{field.upper()}"
                if inner is not None:
                    env[key] = _env_text(inner, dumped[name][field])
                elif SECTIONS[name].model_fields[field].get_default(call_default_factory=True) is not None:
                    env[key] = ""  # an explicit "none", e.g. batch.interval_s (run on demand only)
        elif value is not None:
            env[ENV_PREFIX + name.upper()] = _env_text(value, dumped[name])
    return env
