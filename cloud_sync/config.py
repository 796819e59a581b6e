"""CloudConfig: a TOML file plus ``CLOUD_*`` environment variables, validated once.

Precedence: defaults < config file (``CLOUD_CONFIG`` or ``--config``) <
environment. Keys in the TOML file are the field names (``broker_host = ...``);
each field's variable is ``CLOUD_`` + its name in capitals (``CLOUD_BROKER_HOST``).
Every problem is reported at once, misspelt ``CLOUD_*`` variables included (a
``CLOUD_*`` variable close to no setting, such as the Google Cloud SDK's
``CLOUD_SDK_VERSION``, is another tool's: ignored with a warning).
Validation does no I/O: certificate and key files are opened when used. The
reading and the problem list are the device's ``edge_agent/envconfig.py``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cloud_sync.errors import ConfigError
from edge_agent.access import off_loopback_problem
from edge_agent.envconfig import EnvLayout, describe, read_sources

logger = logging.getLogger(__name__)

ENV_PREFIX = "CLOUD_"
ENV_CONFIG_FILE = "CLOUD_CONFIG"


def _default_db_path() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "cloud-sync" / "cloud.sqlite3"


def _default_client_id() -> str:
    return f"cloud-ingest-{socket.gethostname()[:40]}-{os.getpid()}"


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- broker ---------------------------------------------------------------------
    broker_host: str = Field(default="127.0.0.1", min_length=1, description="MQTT broker host name.")
    broker_port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker port (8883 with TLS).")
    broker_tls: bool = Field(default=False, description="Connect to the broker over TLS.")
    broker_ca_file: Path | None = Field(
        default=None, description="CA bundle that signed the broker's certificate (else the system's)."
    )
    broker_cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    broker_key_file: Path | None = Field(default=None, description="Private key of the client certificate.")
    broker_username: str | None = Field(default=None, description="MQTT user name.")
    broker_password: SecretStr | None = Field(default=None, description="MQTT password (never logged).")
    broker_keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")

    # -- database -------------------------------------------------------------------
    db_path: Path = Field(default_factory=_default_db_path, description="The cloud SQLite database file.")
    db_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:password@host:port/dbname); when set, the cloud "
        "runs on PostgreSQL instead of the db_path file (needs the 'postgres' extra).",
    )
    db_pool_size: int = Field(
        default=8, ge=1, le=200, description="PostgreSQL connections per process at most."
    )

    # -- ingest role ------------------------------------------------------------------
    ingest_shared: bool = Field(
        default=False,
        description="Subscribe through an MQTT 5 shared subscription so several ingest roles split the load.",
    )
    ingest_group: str = Field(
        default="cloud-ingest",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Shared-subscription group name ($share/<group>/...).",
    )
    ingest_client_id: str = Field(
        default_factory=_default_client_id,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="MQTT client id of this ingest role; unique per process (default: host and pid).",
    )
    ingest_max_batch: int = Field(
        default=64, ge=1, le=10_000, description="MQTT messages stored per database transaction at most."
    )

    # -- api role -------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="API bind address. Off loopback needs api_token.")
    api_port: int = Field(default=8080, ge=0, le=65535, description="API port.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required on every endpoint but /health when set."
    )
    dashboard_user: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Dashboard login user name."
    )
    dashboard_password_hash: SecretStr | None = Field(
        default=None,
        description="scrypt hash of the dashboard password (python -m cloud_sync.dashboard.auth).",
    )
    session_secret: SecretStr | None = Field(
        default=None, description="Key signing dashboard session cookies (default: random per process)."
    )
    session_max_age_s: int = Field(
        default=12 * 3600, ge=60, le=30 * 24 * 3600, description="Dashboard sessions expire after this."
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Addresses or networks of TLS-terminating proxies in front of the API, comma-separated "
        "(127.0.0.1, 10.0.0.0/8): only their X-Forwarded-Proto and X-Forwarded-For are honoured.",
    )
    command_expiry_s: int = Field(
        default=300, ge=1, le=7 * 24 * 3600, description="Commands undelivered by then are dropped (MQTT 5)."
    )

    # -- model updates -----------------------------------------------------------------
    signing_key_path: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs model manifests and update metadata."
    )
    cosigning_key_paths: list[Path] = Field(
        default_factory=list,
        description="More private keys (PEM) that sign update metadata, for a root threshold above 1 "
        "(environment: paths separated by commas).",
    )
    targets_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=365 * 24 * 3600,
        description="How long signed update metadata stays valid; then a device needs a new deploy.",
    )

    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")

    @field_validator("trusted_proxies", "cosigning_key_paths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """``CLOUD_TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8``, ``CLOUD_COSIGNING_KEY_PATHS=a.pem,b.pem``:
        a comma-separated list in a variable."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CloudConfig:
        problems = cross_checks(dict(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def db_target(self) -> Path | str:
        """What the store opens: the PostgreSQL URL when db_url is set, else the SQLite file."""
        return self.db_url.get_secret_value() if self.db_url is not None else self.db_path

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-able values, secrets shown as '***'."""
        out = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if out.get(name) is not None:
                out[name] = "***"
        return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on", "t", "y"}
    return bool(value)


def cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Problems between fields; works on validated values and on raw ones (file + environment)."""
    problems = []
    if (values.get("broker_cert_file") is None) != (values.get("broker_key_file") is None):
        problems.append("broker_cert_file and broker_key_file go together: set both or neither")
    tls_files = ("broker_ca_file", "broker_cert_file", "broker_key_file")
    if not _truthy(values.get("broker_tls")) and any(values.get(f) is not None for f in tls_files):
        problems.append("broker_ca_file/broker_cert_file/broker_key_file need broker_tls = true")
    if str(values.get("db_path") or "").startswith(("postgresql:", "postgres:")):
        problems.append("db_path is a file; a postgresql:// URL goes in db_url (CLOUD_DB_URL)")
    url = values.get("db_url")
    if url is not None:
        text = url.get_secret_value() if isinstance(url, SecretStr) else str(url)
        if not text.startswith(("postgresql://", "postgres://")):
            problems.append("db_url must start with postgresql:// (unset it to use the SQLite file db_path)")
    if values.get("broker_password") is not None and values.get("broker_username") is None:
        problems.append("broker_password is set without broker_username")
    if (values.get("dashboard_user") is None) != (values.get("dashboard_password_hash") is None):
        problems.append("dashboard_user and dashboard_password_hash go together: set both or neither")
    token_set = values.get("api_token") is not None
    problem = off_loopback_problem("api_host", values.get("api_host"), token_set, "CLOUD_API_TOKEN")
    if problem:
        problems.append(problem)
    return problems


SECRET_FIELDS = ("broker_password", "api_token", "dashboard_password_hash", "session_secret", "db_url")
ENV_VARS: dict[str, str] = {ENV_PREFIX + name.upper(): name for name in CloudConfig.model_fields}


ENV_LAYOUT = EnvLayout(
    prefix=ENV_PREFIX,
    config_file_var=ENV_CONFIG_FILE,
    variables={key: (name,) for key, name in ENV_VARS.items()},
    foreign_ok=True,
)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> CloudConfig:
    """Build the config; ``ConfigError`` lists every problem found."""
    values, problems = read_sources(ENV_LAYOUT, path, os.environ if env is None else env)
    try:
        config = CloudConfig.model_validate(values)
    except ValidationError as exc:
        problems.extend(_describe(exc))
        problems.extend(p for p in cross_checks(values) if p not in problems)
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def with_overrides(config: CloudConfig, **updates: Any) -> CloudConfig:
    """Re-validate ``config`` with command-line overrides (``None`` values are ignored)."""
    values = config.model_dump() | {k: v for k, v in updates.items() if v is not None}
    try:
        return CloudConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> list[str]:
    return describe(exc, SECRET_FIELDS)
