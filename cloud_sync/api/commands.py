"""Commands to a device: ``POST /commands`` publishes over MQTT; ``GET /commands/{id}?wait=N``
long-polls the store until the ingest role has stored the reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync.api.deps import CloudDep, Filter, Row
from cloud_sync.errors import BrokerError, InvalidRequest
from edge_agent.serving.openapi import errors
from edge_agent.sync import protocol

logger = logging.getLogger(__name__)

MAX_WAIT_S = 60.0
POLL_S = 0.1
PUBLISH_WAIT_S = 5.0
router = APIRouter()


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(pattern=protocol.DEVICE_RE.pattern, description="Device the command is for.")
    name: protocol.CommandName = Field(description="What the device should do.")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the command.")


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
