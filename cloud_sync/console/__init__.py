"""The operator's console: a typed client of the cloud API and the ``edge-console`` CLI over it.

:mod:`cloud_sync.console.client` is the library (``ConsoleClient``); every
command of :mod:`cloud_sync.console.app` is a thin wrapper over one of its calls.
"""

from cloud_sync.console.client import (
    DEFAULT_API,
    ApiError,
    ApiUnreachable,
    CommandFailed,
    CommandTimeout,
    ConsoleClient,
    ConsoleError,
    Deployment,
    DeploymentTimeout,
    Device,
    Reply,
    Result,
    ResultFilter,
    ResultPage,
    Rollout,
    Telemetry,
)

__all__ = [
    "DEFAULT_API",
    "ApiError",
    "ApiUnreachable",
    "CommandFailed",
    "CommandTimeout",
    "ConsoleClient",
    "ConsoleError",
    "Deployment",
    "DeploymentTimeout",
    "Device",
    "Reply",
    "Result",
    "ResultFilter",
    "ResultPage",
    "Rollout",
    "Telemetry",
]
