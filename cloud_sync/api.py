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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from cloud_sync import __version__, dashboard, deploy, rollout
from cloud_sync.artifacts import artifact_dir, artifact_path
from cloud_sync.config import CloudConfig
from cloud_sync.errors import BrokerError, CloudSyncError, InvalidRequest, NotFound
from cloud_sync.mqtt import MqttLink, broker_options
from cloud_sync.store import ResultQuery, Store
from cloud_sync.trust import Signer
from edge_agent.serving.middleware import BodyLimit
from edge_agent.serving.openapi import Responses, allowed_methods, errors, finish_schema
from edge_agent.sync import protocol

logger = logging.getLogger(__name__)

MAX_WAIT_S = 60.0
POLL_S = 0.1
PUBLISH_WAIT_S = 5.0
MAX_BODY_BYTES = 1024 * 1024
MAX_OFFSET = 1_000_000_000  # SQLite takes 64-bit integers; past this, page with the cursor
PUBLIC_PATHS = frozenset({"/health"})
# Artifacts are public: named by their sha256 (known only from a device's desired state) and
# verified on the device against a signed manifest; devices hold no API token.
PUBLIC_PREFIXES = ("/artifacts/",)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
Row = dict[str, Any]
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}
ARTIFACT: Responses = {
    200: {"description": "The archive", "content": TAR},
    206: {"description": "The requested byte range", "content": TAR},
    416: {"description": "Range not satisfiable"},
}
ARTIFACT |= errors(404)
Filter = Annotated[str | None, Query(min_length=1, max_length=200)]


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(pattern=protocol.DEVICE_RE.pattern, description="Device the command is for.")
    name: protocol.CommandName = Field(description="What the device should do.")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the command.")


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


class Cloud:
    """What the endpoints share: settings, the store, the MQTT link, the artifact directory."""

    def __init__(self, config: CloudConfig, store: Store, link: MqttLink) -> None:
        self.config, self.store, self.link = config, store, link
        self.artifacts = artifact_dir(config)
        self.rollouts = rollout.Rollouts(store, link, lambda: Signer.from_config(config))


def _cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


CloudDep = Annotated[Cloud, Depends(_cloud)]
router = APIRouter()


# -- devices, results, telemetry -----------------------------------------------------------
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


# -- commands ----------------------------------------------------------------------------------
@router.post(
    "/commands",
    tags=["commands"],
    status_code=202,
    summary="Send a command to a device (one the cloud has heard from)",
    responses=errors(404, 422, 503),
)
def post_command(cloud: CloudDep, body: CommandRequest) -> Row:
    if not cloud.link.connected:
        raise BrokerError("the API is not connected to the broker; try again shortly")
    cmd = protocol.Command(
        device=body.device, id=uuid.uuid4().hex, name=body.name, args=body.args, ts=time.time()
    )
    try:
        payload = protocol.encode(cmd)
    except protocol.ProtocolError as exc:
        raise InvalidRequest(exc.message) from None
    cloud.store.add_command(cmd.id, cmd.device, cmd.name, cmd.args, cmd.ts)
    topic = protocol.topic(cmd.device, "cmd")
    try:
        cloud.link.publish(
            topic,
            payload,
            qos=1,
            response_topic=protocol.topic(cmd.device, "cmd_reply"),
            correlation=cmd.id.encode(),
            expiry_s=cloud.config.command_expiry_s,
            wait_s=PUBLISH_WAIT_S,
        )
    except BrokerError as exc:
        cloud.store.mark_command(cmd.id, "failed", exc.message)
        raise
    cloud.store.mark_command(cmd.id, "sent")
    logger.info("command %s %s sent to %s", cmd.id, cmd.name, cmd.device)
    return {"id": cmd.id, "device": cmd.device, "name": cmd.name, "state": "sent", "topic": topic}


@router.get("/commands", tags=["commands"], summary="Recent commands, newest first")
def list_commands(
    cloud: CloudDep, device: Filter = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Row:
    return {"commands": cloud.store.commands(device, limit)}


@router.get(
    "/commands/{command_id}",
    tags=["commands"],
    summary="A command and its reply (long-poll with wait)",
    responses=errors(404),
)
async def get_command(
    cloud: CloudDep,
    command_id: str,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the reply.")] = 0,
) -> Row:
    deadline = time.monotonic() + wait
    while True:
        cmd: Row = await run_in_threadpool(cloud.store.command, command_id)
        if cmd["reply"] is not None or cmd["state"] == "failed" or time.monotonic() >= deadline:
            return cmd
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


# -- models and deployments (filled by the signed-update tooling) --------------------------------
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


@router.api_route(
    "/artifacts/{sha256}",
    methods=["GET", "HEAD"],
    tags=["models"],
    summary="A model package archive (HTTP Range: resumable); no token needed",
    response_model=None,
    response_class=FileResponse,
    responses=ARTIFACT,
)
def get_artifact(cloud: CloudDep, sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]) -> Response:
    path = artifact_path(cloud.artifacts, sha256)
    if not path.is_file():
        raise NotFound(f"no artifact {sha256}")
    return FileResponse(
        path,
        media_type="application/x-tar",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"},
    )


# -- the application -------------------------------------------------------------------------------
def create_app(config: CloudConfig, *, store: Store | None = None, link: MqttLink | None = None) -> FastAPI:
    store = store or Store(config.db_target, pool_size=config.db_pool_size)
    link = link or MqttLink(broker_options(config), f"cloud-api-{socket.gethostname()[:40]}-{os.getpid()}")
    cloud = Cloud(config, store, link)
    feed: dashboard.Feed | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cloud.link.start(wait_s=None)  # connects (and reconnects) in the background
        driver = rollout.RolloutDriver(cloud.rollouts)
        driver.start()
        logger.info("cloud API ready (database %s)", cloud.store.where)
        yield
        driver.stop()
        if feed is not None:
            await feed.close()
        cloud.link.close()
        cloud.store.close()

    app = FastAPI(
        title="cloud-sync API",
        version=__version__,
        lifespan=lifespan,
        description="Fleet state, results and commands of the edge inference agents.",
    )
    app.state.cloud = cloud

    @app.get("/health", tags=["operations"], summary="Liveness; no token needed")
    def health() -> Row:
        return {
            "status": "ok",
            "broker_connected": cloud.link.connected,
            "schema": cloud.store.schema_version,
        }

    app.include_router(router)
    feed = dashboard.mount(app, config, store, link)
    app.openapi = finish_schema(  # type: ignore[method-assign]
        app.openapi,
        public=lambda path: dashboard.is_public(path, PUBLIC_PATHS, PUBLIC_PREFIXES),
        bearer=config.api_token is not None,
        cookie=dashboard.COOKIE if config.api_token or config.dashboard_user else None,
    )
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, hint="the cloud API takes bodies up to 1 MiB")
    app.middleware("http")(_gate)
    if config.trusted_proxies:  # outermost: the gate and the cookies see the client's scheme and address
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[str(n) for n in config.trusted_proxies])
    return app


async def _gate(request: Request, call_next: Any) -> Response:
    """Login (token or session + CSRF), checked before any parsing (no 422 leaks); the body limit
    (:class:`edge_agent.serving.middleware.BodyLimit`) runs next, before the body is parsed."""
    refused = await dashboard.refuse(request, PUBLIC_PATHS, PUBLIC_PREFIXES)
    if refused is not None and not _unserved_method(request):
        return refused
    response: Response = await call_next(request)
    return response


def _unserved_method(request: Request) -> bool:
    """A method the path does not serve: routing answers 405 (with Allow) before any login is asked."""
    methods = allowed_methods(request.app.openapi(), request.url.path)
    return bool(methods) and request.method not in methods


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudSyncError)
    async def cloud_error(request: Request, exc: CloudSyncError) -> Response:
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "; ".join(problems), "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names only the first route's methods
            methods = allowed_methods(app.openapi(), request.url.path)
            headers = {"Allow": ", ".join(methods)} if methods else headers
        return _error(exc.status_code, str(exc.detail), "http_error", headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s: unexpected error", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}", "internal")


def serve(config: CloudConfig) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=config.api_host,
        port=config.api_port,
        log_level=config.log_level.lower(),
        access_log=config.log_level == "DEBUG",
        proxy_headers=False,  # X-Forwarded-* are honoured from trusted_proxies only (create_app)
        timeout_graceful_shutdown=3,  # open event streams (dashboard) never end on their own
    )
