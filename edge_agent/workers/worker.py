"""The ``worker`` role: run queued asynchronous jobs, store their results.

The loop: claim a job, run it, record it; when the queue has nothing to
claim, block in ``select()`` on the doorbell socket until a job is queued, a
known deadline passes (the earliest lease expiry or retry time, so a job held
by a dead worker is picked up), or a signal arrives. An idle worker uses no
CPU. SIGTERM / SIGINT: finish the current job, then exit 0.

Models are loaded lazily, only those the jobs need, at the version each job
was validated against when it was queued.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from edge_agent.bootstrap import build_engine, open_storage
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, InvalidInput
from edge_agent.runtime.engine import Engine
from edge_agent.storage import DiskFull, StorageError
from edge_agent.workers.doorbell import Doorbell
from edge_agent.workers.jobs import Job, JobQueue, unpack

logger = logging.getLogger(__name__)
_Answer = tuple[Job, dict[str, Any], str, float]  # a job, its result body, the version, start time

DEADLINE_MARGIN_S = 0.005  # wake just after a deadline, so the lease has surely passed
PAUSE_S = 0.5  # first pause after the disk was full; doubles up to MAX_PAUSE_S while it stays full
MAX_PAUSE_S = 8.0


class Worker:
    def __init__(self, config: AgentConfig, worker_id: str, engine: Engine | None = None) -> None:
        self.id = worker_id
        self._own_engine = engine is None
        self.engine = engine or build_engine(config)
        self.doorbell = Doorbell(config.data_dir)
        self.queue = JobQueue(
            open_storage(config),
            lease_s=config.worker.lease_s,
            max_attempts=config.worker.max_attempts,
        )
        self.stopping = False
        self.done = 0
        self.group = config.worker.group  # jobs claimed, run and recorded together
        self.group_window_s = config.worker.group_window_s
        self.paused_until = 0.0  # monotonic; claims wait until then (the disk was full)
        self._pause_s = PAUSE_S

    def stop(self) -> None:
        self.stopping = True

    # -- jobs ---------------------------------------------------------------------------
    def run_job(self, job: Job) -> str:
        """Run one claimed job; returns its new status (or 'lost' if its lease was taken over)."""
        return self.run_jobs([job])[0]

    def run_jobs(self, jobs: list[Job]) -> list[str]:
        """Run claimed jobs, then record every answer in one transaction; each job's new status
        ('lost' if its lease was taken over, 'paused' if the disk was full)."""
        answers, status = self._predict_all(jobs)
        status.update(self._record(answers)[0])
        return [status[job.id] for job in jobs]

    def _predict_all(self, jobs: list[Job]) -> tuple[list[_Answer], dict[str, str]]:
        """Each job's answer; a job that fails is recorded as failed (or retried) at once."""
        status: dict[str, str] = {}
        answers: list[_Answer] = []
        for job in jobs:
            t0 = time.perf_counter()
            try:
                tensors, images = unpack(job.payload_kind, job.payload)
                pred = self.engine.predict(job.model, tensors, images=images, version=job.version)
            except InvalidInput as exc:  # the same input fails every time: no retry
                status[job.id] = self._fail(job, exc.message, retry=False)
                continue
            except EdgeAgentError as exc:  # model missing, corrupt, runtime failure: may pass later
                status[job.id] = self._fail(job, exc.message, retry=True)
                continue
            except Exception as exc:  # a bug: record it on the job, keep serving the queue
                logger.exception("job %s (%s): unexpected error", job.id, job.model)
                status[job.id] = self._fail(job, f"internal error: {type(exc).__name__}: {exc}", retry=True)
                continue
            body = {
                "model": pred.model,
                "version": pred.version,
                "results": pred.results,
                "timings_ms": pred.timings_ms,
            }
            answers.append((job, body, pred.version, t0))
        return answers, status

    def _record(self, answers: list[_Answer], claim: int = 0) -> tuple[dict[str, str], list[Job]]:
        """Record ``answers`` and claim up to ``claim`` more jobs, in one transaction."""
        if not answers and claim <= 0:
            return {}, []
        try:
            recorded, claimed = self.queue.exchange(
                self.id, [(job, body, version) for job, body, version, _ in answers], claim
            )
        except DiskFull as exc:  # a state, not a crash: give the jobs back and pause
            self.pause(exc, *(a[0] for a in answers))
            return {a[0].id: "paused" for a in answers}, []
        except StorageError:
            raise  # the database is unusable: exit, the supervisor restarts, the lease retries
        except Exception as exc:  # an answer the result store cannot hold is a bug: keep it visible
            if len(answers) > 1:  # find which one, recording the others
                out: dict[str, str] = {}
                for a in answers:
                    out.update(self._record([a])[0])
                return out, []
            if not answers:
                raise
            job = answers[0][0]
            logger.exception("job %s (%s): cannot record the result", job.id, job.model)
            error = f"internal error recording the result: {type(exc).__name__}: {exc}"
            return {job.id: self._fail(job, error, retry=False)}, []
        out = {}
        for (job, _, version, t0), ok in zip(answers, recorded, strict=True):
            if not ok:
                logger.warning("job %s: lease lost before completion; result not recorded", job.id)
                out[job.id] = "lost"
                continue
            logger.info(
                "job %s done: %s/%s, attempt %d, %.1f ms",
                job.id,
                job.model,
                version,
                job.attempts,
                (time.perf_counter() - t0) * 1000,
            )
            self.done += 1
            out[job.id] = "done"
        return out, claimed

    def pause(self, exc: DiskFull, *jobs: Job) -> None:
        """The disk is full: stop claiming for a while (doubling up to ``MAX_PAUSE_S``)."""
        for job in jobs:
            self.queue.give_back(job)
        self.paused_until = time.monotonic() + self._pause_s
        logger.warning("worker %s paused for %.0f s: %s", self.id, self._pause_s, exc.message)
        self._pause_s = min(self._pause_s * 2, MAX_PAUSE_S)

    def _fail(self, job: Job, error: str, *, retry: bool) -> str:
        try:
            status = self.queue.fail(job, error, retry=retry)
        except DiskFull as exc:
            self.pause(exc, job)
            return "paused"
        logger.warning(
            "job %s attempt %d/%d: %s -> %s", job.id, job.attempts, job.max_attempts, error, status
        )
        return status or "lost"

    # -- the loop ------------------------------------------------------------------------
    def drain(self) -> int:
        """Run claimable jobs until none is left (or a stop was asked); returns how many ran."""
        n = 0
        if self.stopping or time.monotonic() < self.paused_until:
            return 0
        try:
            jobs = self.queue.claim_many(self.id, self.group)
        except DiskFull as exc:
            self.pause(exc)
            return 0
        while jobs:  # each turn records a group and claims the next in the same commit
            answers, _ = self._predict_all(jobs)
            n += len(jobs)
            more = not self.stopping and time.monotonic() >= self.paused_until
            if more and len(jobs) < self.group and self.group_window_s > 0:
                time.sleep(self.group_window_s)  # a trickle: let more queue up for this commit
            status, jobs = self._record(answers, self.group if more else 0)
            if "done" in status.values():
                self._pause_s = PAUSE_S
        return n

    def serve(self, wake_fd: int | None = None) -> None:
        """Run jobs as they come until ``stop()``; ``wake_fd`` interrupts the wait (signals)."""
        also = () if wake_fd is None else (wake_fd,)
        with self.doorbell.listen(self.id) as bell:  # bound before the first look: no lost ring
            logger.info("worker %s ready (doorbell %s)", self.id, bell.path)
            while not self.stopping:
                bell.drain()
                self.drain()
                if self.stopping:
                    break
                deadline = self.queue.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.time()) + DEADLINE_MARGIN_S
                if self.paused_until > time.monotonic():  # disk full: look again after the pause
                    pause = self.paused_until - time.monotonic()
                    timeout = pause if timeout is None else min(timeout, pause)
                rung = bell.wait(timeout, also)
                if wake_fd is not None:
                    _drain_fd(wake_fd)
                if rung and self.group > 1 and self.group_window_s > 0 and not self.stopping:
                    time.sleep(self.group_window_s)  # let a burst queue up: one commit records it

    def close(self) -> None:
        if self._own_engine:
            self.engine.close()
        self.doorbell.close()
        self.queue.storage.close()


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    worker = Worker(config, getattr(args, "id", None) or default_id())
    try:
        if getattr(args, "once", False):
            n = worker.drain()
            logger.info("worker %s: queue drained, %d job(s) run", worker.id, n)
            return 0
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("worker %s: %s, stopping after the current job", worker.id, signal.strsignal(signum))
            worker.stop()

        old_fd = signal.set_wakeup_fd(w)
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker.serve(wake_fd=r)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(r)
            os.close(w)
        logger.info("worker %s stopped: %d job(s) done", worker.id, worker.done)
        return 0
    finally:
        worker.close()
