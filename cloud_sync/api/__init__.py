"""The cloud HTTP API: devices, results, telemetry, commands, models, deployments.

A thin layer over :class:`cloud_sync.store.Store` (read by every endpoint),
:class:`cloud_sync.mqtt.MqttLink` (used by ``POST /commands`` and ``POST
/deployments``) and :mod:`cloud_sync.deploy`. Replies to commands are stored by
the ingest role; ``GET /commands/{id}?wait=N`` polls the store until the reply
is there. ``GET /artifacts/{sha256}`` serves model package archives with HTTP
Range support, so devices resume interrupted downloads. With ``api_token`` set,
every endpoint but ``/health`` and ``/artifacts/`` needs ``Authorization: Bearer
<token>``; the dashboard (:mod:`cloud_sync.dashboard`, under ``/dashboard/``) adds a session-cookie
login that also opens the API (see docs/dashboard.md). Errors are JSON ``{"error", "code"}``, mapped from
``CloudSyncError.status`` in one handler.

One module per resource holds its routes and request bodies (``devices``,
``results``, ``commands``, ``models``, ``deployments``, ``rollouts``,
``downloads``); ``app`` puts them together in the order of the OpenAPI document.
"""

from __future__ import annotations

from cloud_sync.api.app import create_app, serve

__all__ = ["create_app", "serve"]
