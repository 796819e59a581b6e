"""Staged rollouts in waves (:mod:`cloud_sync.rollout`): start, list, show, pause / resume / abort."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync import rollout
from cloud_sync.api.deps import CloudDep, Row
from cloud_sync.errors import InvalidRequest
from edge_agent.serving.openapi import errors

router = APIRouter()


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Model name.")
    version: str = Field(min_length=1, description="A published (signed) version of it.")
    devices: list[str] | None = Field(
        default=None, min_length=1, max_length=10_000, description="Devices, split into 1, 10 %, 50 %, all."
    )
    all: bool = Field(default=False, description="Every device the cloud has heard from.")
    waves: list[list[str]] | None = Field(
        default=None, min_length=1, max_length=100, description="Explicit waves (device lists), in order."
    )
    groups: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="One wave per rollout group the devices report (EDGE_GROUP), in order; '*': the rest.",
    )
    thresholds: rollout.Thresholds = Field(default_factory=rollout.Thresholds)
    artifact_base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Base URL devices download artifacts from."
    )
    note: str | None = Field(default=None, max_length=1000)


@router.post(
    "/rollouts",
    tags=["rollouts"],
    status_code=201,
    summary="Start a staged rollout in waves",
    responses=errors(404, 422, 503),
)
def post_rollout(cloud: CloudDep, body: RolloutRequest, request: Request) -> Row:
    if sum([body.devices is not None, body.all, body.waves is not None, body.groups is not None]) != 1:
        raise InvalidRequest("give exactly one of devices, all, waves, groups")
    devices = body.devices or ([d["id"] for d in cloud.store.devices()] if body.all else [])
    waves = rollout.waves_by_group(cloud.store.devices(), body.groups) if body.groups else body.waves
    return cloud.rollouts.create(
        body.model,
        body.version,
        devices,
        base_url=body.artifact_base_url or str(request.base_url),
        waves=waves,
        thresholds=body.thresholds,
        note=body.note,
    )


@router.get("/rollouts", tags=["rollouts"], summary="Rollouts, newest first")
def list_rollouts(cloud: CloudDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Row:
    return {"rollouts": cloud.rollouts.recent(limit)}


@router.get(
    "/rollouts/{rollout_id}",
    tags=["rollouts"],
    summary="A rollout: waves, per-device state, figures",
    responses=errors(404),
)
def get_rollout(cloud: CloudDep, rollout_id: str) -> Row:
    doc = cloud.rollouts.get(rollout_id)
    for wave in doc["waves"]:
        wave["device_states"] = {}
        # the latest step wins: staged, then promoted, then rolled back
        steps = [
            wave.get("stage_deployment"),
            wave.get("promote_deployment"),
            *wave.get("rollback_deployments", []),
        ]
        for deployment in [s for s in steps if s]:
            for d in cloud.store.deployment_status(deployment)["devices"]:
                state = "rolled_back" if deployment in wave.get("rollback_deployments", []) else d["state"]
                if state == "rolled_back" and d["state"] != "active":
                    state = d["state"]  # the roll back itself still in progress or failed
                wave["device_states"][d["device"]] = {"state": state, "reason": d["reason"]}
    return doc


@router.post(
    "/rollouts/{rollout_id}/{action}",
    tags=["rollouts"],
    summary="pause, resume or abort a rollout",
    responses=errors(404, 422),
)
def act_on_rollout(
    cloud: CloudDep, rollout_id: str, action: Annotated[str, PathParam(pattern="^(pause|resume|abort)$")]
) -> Row:
    act = {"pause": cloud.rollouts.pause, "resume": cloud.rollouts.resume, "abort": cloud.rollouts.abort}
    return act[action](rollout_id)
