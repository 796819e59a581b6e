"""Deployments of signed model versions, and one device's rollback (:mod:`cloud_sync.deploy`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync import deploy
from cloud_sync.api.deps import CloudDep, Row
from cloud_sync.trust import Signer
from edge_agent.serving.openapi import errors

router = APIRouter()


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Model name.")
    version: str = Field(min_length=1, description="A published (signed) version of it.")
    devices: list[str] | None = Field(
        default=None, min_length=1, max_length=10_000, description="Target devices (or all=true)."
    )
    all: bool = Field(default=False, description="Target every device the cloud has heard from.")
    artifact_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL devices download artifacts from (default: the URL this request used).",
    )
    note: str | None = Field(default=None, max_length=1000, description="Free text kept with it.")
    rollback: bool = Field(
        default=False,
        description="Mark this as going back to an older version (signed in the update metadata).",
    )


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=64, description="Model name.")
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Older published version to go back to (default: the newest earlier version the "
        "device reported active).",
    )
    artifact_base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Base URL devices download artifacts from."
    )
    note: str | None = Field(default=None, max_length=1000, description="Free text kept with it.")


@router.get("/deployments", tags=["deployments"], summary="Deployments, newest first, with state counts")
def list_deployments(cloud: CloudDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Row:
    return {"deployments": [cloud.store.deployment_status(d["id"]) for d in cloud.store.deployments(limit)]}


@router.get(
    "/deployments/{deployment_id}",
    tags=["deployments"],
    summary="A deployment and per-device state",
    responses=errors(404),
)
def get_deployment(cloud: CloudDep, deployment_id: str) -> Row:
    return cloud.store.deployment_status(deployment_id)


@router.post(
    "/deployments",
    tags=["deployments"],
    status_code=201,
    summary="Deploy a signed model version",
    responses=errors(404, 422, 503),
)
def post_deployment(cloud: CloudDep, body: DeploymentRequest, request: Request) -> Row:
    return deploy.deploy(
        cloud.store,
        cloud.link,
        body.model,
        body.version,
        devices=body.devices,
        all_devices=body.all,
        base_url=body.artifact_base_url or str(request.base_url),
        signer=Signer.from_config(cloud.config),
        note=body.note,
        rollback=body.rollback,
    )


@router.post(
    "/devices/{device_id}/rollback",
    tags=["deployments"],
    status_code=201,
    summary="Take one device back to an older model version: new signed metadata marked rollback",
    responses=errors(404, 422, 503),
)
def post_device_rollback(cloud: CloudDep, device_id: str, body: RollbackRequest, request: Request) -> Row:
    """A deployment to this device alone whose signed targets metadata names the older version with
    ``rollback: true`` and the model's next release counter; devices refuse a lower version without
    it, and refuse the MQTT ``rollback``/``activate`` commands once signed updates are configured."""
    return deploy.rollback_device(
        cloud.store,
        cloud.link,
        device_id,
        body.model,
        body.version,
        base_url=body.artifact_base_url or str(request.base_url),
        signer=Signer.from_config(cloud.config),
        note=body.note,
    )
