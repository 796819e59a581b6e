"""Asynchronous and sync-async patterns: the gateway half.

``POST /async/{name}`` validates the request against the model's manifest
(bad input is a 4xx here, never a failed job), stores it durably as a queued
job, rings the workers' doorbell and answers 202 with the job id at once.
``GET /jobs/{id}`` follows the job. The ``worker`` role runs it.

``POST /sync-async`` answers with the fast model now and queues the accurate
model as a job; the fast result and the job are stored in one transaction and
linked (the link id is the job id).
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from edge_agent.errors import InvalidInput
from edge_agent.runtime.inputs import validate
from edge_agent.runtime.package import Manifest
from edge_agent.serving.codec import json_response, read_inputs
from edge_agent.serving.deps import TENSOR_BODY, Gateway, gateway
from edge_agent.serving.openapi import errors
from edge_agent.storage import new_id
from edge_agent.workers.doorbell import Doorbell
from edge_agent.workers.jobs import SOURCE_SYNC_ASYNC, Job, JobNotFound, JobQueue, PayloadKind, idempotent_id
from edge_agent.workers.jobs import pack_images as _pack_images
from edge_agent.workers.jobs import pack_tensors as _pack_tensors

router = APIRouter(tags=["asynchronous"])

MAX_IDEMPOTENCY_KEY = 200


def _queue(request: Request) -> JobQueue:
    """One queue (and one doorbell sender) per application, made on first use."""
    state = request.app.state
    queue: JobQueue | None = getattr(state, "job_queue", None)
    if queue is None:
        gw = gateway(request)
        queue = JobQueue(
            gw.storage,
            lease_s=gw.config.worker.lease_s,
            max_attempts=gw.config.worker.max_attempts,
            doorbell=Doorbell(gw.config.data_dir),
        )
        state.job_queue = queue
    return queue


def _manifest(gw: Gateway, name: str, version: str | None) -> Manifest:
    """The manifest a job will run with, read from the store (the gateway need not load the model)."""
    version = version or gw.engine.active_version(name) or gw.engine.store.active_version(name)
    return gw.engine.store.manifest(name, version)


async def _payload(gw: Gateway, request: Request, manifest: Manifest) -> tuple[PayloadKind, bytes]:
    """Read and fully validate the body (images are decoded once); return the stored form."""
    tensors, images = await read_inputs(request, manifest)
    return await _validated(gw, manifest, tensors, images)


async def _validated(
    gw: Gateway, manifest: Manifest, tensors: dict[str, Any] | None, images: list[bytes] | None
) -> tuple[PayloadKind, bytes]:
    if images is not None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(gw.service.executor, gw.engine.prepare_images, manifest, images)
        return "images", _pack_images(images)
    arrays = validate(manifest, tensors or {}, gw.engine.options.max_rows)
    return "tensors", _pack_tensors(arrays)


def _job_doc(queue: JobQueue, job: Job) -> dict[str, Any]:
    links = {"self": f"/jobs/{job.id}"}
    if job.link is not None:
        links["sync_async"] = f"/sync-async/{job.id}"
    return {
        "id": job.id,
        "model": job.model,
        "version": job.version,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "worker": job.worker,
        "result": queue.result_body(job) if job.status == "done" else None,
        "error": job.error,
        "links": links,
    }


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


@router.post(
    "/async/{name}",
    status_code=202,
    summary="Queue a prediction; answers at once with a job id (Idempotency-Key header honoured)",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=errors(404, 422, 503),
)
async def submit(name: str, request: Request, version: str | None = None) -> Response:
    gw = gateway(request)
    key = _idempotency_key(request)
    manifest = _manifest(gw, name, version)
    kind, payload = await _payload(gw, request, manifest)
    queue = _queue(request)
    gw.storage.require_room("queueing a job")
    job_id = await asyncio.wrap_future(
        gw.storage.submit(
            lambda conn: queue.add(
                conn,
                model=manifest.name,
                version=manifest.version,
                kind=kind,
                payload=payload,
                job_id=idempotent_id(key) if key else None,
            ),
            "queueing a job",
        )
    )
    queue.notify()
    status = queue.get(job_id).status if key else "queued"  # a replayed key shows the job as it is now
    return json_response(
        {"job_id": job_id, "status": status, "links": {"self": f"/jobs/{job_id}"}}, status=202
    )


@router.get(
    "/jobs/{job_id}", summary="A job: status, attempts, timestamps, result or error", responses=errors(404)
)
async def job_status(job_id: str, request: Request) -> Response:
    queue = _queue(request)
    return json_response(_job_doc(queue, queue.get(job_id)))


@router.get("/jobs", summary="How many jobs are queued, running, done and failed")
async def job_counts(request: Request) -> Response:
    return json_response({"counts": _queue(request).counts()})


@router.post(
    "/sync-async",
    summary="Fast model's answer now, accurate model's answer later through a linked job",
    openapi_extra={"requestBody": TENSOR_BODY},
    responses=errors(404, 422, 503),
)
async def sync_async(request: Request) -> Response:
    gw = gateway(request)
    fast_name, accurate_name = gw.config.services.sync_async_fast, gw.config.services.sync_async_accurate
    accurate = _manifest(gw, accurate_name, None)
    fast = gw.engine.model(fast_name).manifest
    tensors, images = await read_inputs(request, fast)
    kind, payload = await _validated(gw, accurate, tensors, images)
    pred = await gw.service.predict(fast.name, fast.version, tensors=tensors, images=images)
    body = {
        "model": pred.model,
        "version": pred.version,
        "results": pred.results,
        "timings_ms": pred.timings_ms,
    }
    queue = _queue(request)
    fast_id = new_id()

    def record(conn: sqlite3.Connection) -> str:
        job_id = queue.add(
            conn, model=accurate.name, version=accurate.version, kind=kind, payload=payload, link=fast_id
        )
        gw.storage.record_result(
            conn,
            source=SOURCE_SYNC_ASYNC,
            model=pred.model,
            version=pred.version,
            body=body,
            ref=job_id,
            result_id=fast_id,
        )
        return job_id

    gw.storage.require_room("queueing a sync-async job")
    job_id = await asyncio.wrap_future(gw.storage.submit(record, "queueing a sync-async job"))
    queue.notify()
    return json_response(
        {
            "link": job_id,
            "fast": {"result_id": fast_id, **body},
            "accurate": {"job_id": job_id, "status": "queued", "links": {"self": f"/jobs/{job_id}"}},
            "links": {"self": f"/sync-async/{job_id}"},
        }
    )


@router.get(
    "/sync-async/{link}",
    summary="Both halves of a sync-async request: fast result and accurate job",
    responses=errors(404),
)
async def sync_async_status(link: str, request: Request) -> Response:
    gw = gateway(request)
    queue = _queue(request)
    job = queue.get(link)
    if job.link is None:
        raise JobNotFound(f"{link!r} is an asynchronous job, not a sync-async link: see /jobs/{link}")
    fast = gw.storage.result(job.link)
    return json_response(
        {
            "link": job.id,
            "fast": {"result_id": fast.id, "created": fast.created, **fast.body},
            "accurate": _job_doc(queue, job),
            "links": {"self": f"/sync-async/{job.id}"},
        }
    )
