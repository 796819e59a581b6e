"""Devices and the fleet: ``/devices``, ``/fleet/summary``, ``/devices/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud_sync.api.deps import CloudDep, Row
from edge_agent.serving.openapi import errors

router = APIRouter()


@router.get("/devices", tags=["devices"], summary="Devices the cloud has heard from, in id order, paged")
def list_devices(
    cloud: CloudDep,
    online: bool | None = None,
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="Devices per page; without it, every device.")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    prefix: Annotated[str | None, Query(max_length=128, description="Only ids starting with this.")] = None,
) -> Row:
    if limit is None and cursor is None and prefix is None:
        return {"devices": cloud.store.devices(online), "next_cursor": None}
    page = cloud.store.device_page(online, after=cursor, limit=limit or 100, prefix=prefix)
    return {"devices": page.items, "next_cursor": page.next_cursor}


@router.get("/fleet/summary", tags=["devices"], summary="Fleet counts computed by the database")
def fleet_summary(cloud: CloudDep) -> Row:
    """Online/offline/unknown devices, outbox depth from each device's newest telemetry, and how
    many devices run each agent and model version."""
    return cloud.store.fleet_summary()


@router.get(
    "/devices/{device_id}",
    tags=["devices"],
    summary="One device and its recent status history",
    responses=errors(404),
)
def get_device(cloud: CloudDep, device_id: str, history: Annotated[int, Query(ge=0, le=1000)] = 20) -> Row:
    return cloud.store.device(device_id) | {"status_history": cloud.store.status_history(device_id, history)}
