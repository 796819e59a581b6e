"""Models and on-device benchmark figures (filled by the signed-update tooling and the devices)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_sync.api.deps import CloudDep, Row
from edge_agent.serving.openapi import errors

router = APIRouter()


@router.get("/models", tags=["models"], summary="Models and how many versions each has")
def list_models(cloud: CloudDep) -> Row:
    return {"models": cloud.store.models()}


@router.get("/models/{name}", tags=["models"], summary="A model and its versions", responses=errors(404))
def get_model(cloud: CloudDep, name: str) -> Row:
    return cloud.store.model(name)


@router.get(
    "/bench",
    tags=["models"],
    summary="Latest on-device benchmark figures (edge-agent models bench) per device and model",
)
def list_bench(cloud: CloudDep, device: str | None = None, model: str | None = None) -> Row:
    return {"bench": cloud.store.bench(device, model)}
