"""The cloud service's exception tree.

Every error ``cloud_sync`` raises on purpose is a ``CloudSyncError``. Library
errors (sqlite3, paho, ssl) are translated where they enter, so callers catch
this tree only. ``status`` is the HTTP status the API answers with (one
exception handler does the mapping), ``code`` a stable machine-readable name;
the CLI alone maps them to exit codes.
"""

from __future__ import annotations

from edge_agent.errors import CodedError


class CloudSyncError(CodedError):
    """Root of every error the cloud service raises on purpose."""


class ConfigError(CloudSyncError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    code = "config_invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class StoreError(CloudSyncError):
    """The database cannot be opened, is busy past the timeout, or failed a write."""

    status = 503
    code = "store_unavailable"


class SchemaTooNew(StoreError):
    """The database was written by a newer cloud_sync than this one."""

    code = "schema_too_new"


class NotFound(CloudSyncError):
    status = 404
    code = "not_found"


class InvalidRequest(CloudSyncError):
    """The caller asked for something malformed (bad cursor, bad filter, bad command)."""

    status = 422
    code = "invalid_request"


class ValueRefused(InvalidRequest):
    """The database refused a value of this one write or query (PostgreSQL: a NUL character in a
    text field, a number out of range; a constraint): the caller's data, not the database being
    unavailable, so retrying the same value cannot help."""

    code = "value_refused"


class Unauthorized(CloudSyncError):
    status = 401
    code = "unauthorized"


class Rejected(CloudSyncError):
    """A device message that decoded but cannot be stored (unknown command, id conflict...)."""

    status = 422
    code = "rejected"


class BrokerError(CloudSyncError):
    """The MQTT broker is unreachable, refused us, or did not accept a publish in time."""

    status = 503
    code = "broker_unavailable"
