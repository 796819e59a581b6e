"""What devices report: stored results (``/results``) and telemetry snapshots (``/telemetry``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from cloud_sync.api.deps import CloudDep, Filter, Row
from cloud_sync.store import ResultQuery
from edge_agent.serving.openapi import errors

MAX_OFFSET = 1_000_000_000  # SQLite takes 64-bit integers; past this, page with the cursor

router = APIRouter()


@router.get(
    "/results",
    tags=["results"],
    summary="Stored results, filtered, newest first, paged (offset or cursor, not both)",
    responses=errors(422),
)
def list_results(
    cloud: CloudDep,
    device: Filter = None,
    model: Filter = None,
    label: Filter = None,
    since: Annotated[float | None, Query(description="Created at or after (Unix time).")] = None,
    until: Annotated[float | None, Query(description="Created before (Unix time).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    cursor: Annotated[
        str | None, Query(min_length=1, description="next_cursor of the previous page.")
    ] = None,
    order: Literal["desc", "asc"] = "desc",
) -> Row:
    q = ResultQuery(device, model, label, since, until, limit, offset, cursor, newest_first=order == "desc")
    page = cloud.store.results(q)
    return {"results": page.items, "next_cursor": page.next_cursor}


@router.get("/results/{result_id}", tags=["results"], summary="One stored result", responses=errors(404))
def get_result(cloud: CloudDep, result_id: str) -> Row:
    return cloud.store.result(result_id)


@router.get(
    "/telemetry",
    tags=["devices"],
    summary="A device's telemetry snapshots, newest first",
    responses=errors(404),
)
def list_telemetry(
    cloud: CloudDep,
    device: Annotated[str, Query(min_length=1, max_length=200)],
    since: float | None = None,
    until: float | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Row:
    return {"device": device, "telemetry": cloud.store.telemetry(device, since, until, limit)}
