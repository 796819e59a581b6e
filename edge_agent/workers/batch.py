"""The batch role: predict registered items on a schedule, in parallel.

``edge-agent batch`` sleeps on its doorbell until the next fire time of its
schedule (``batch.interval_s`` or ``batch.cron``) or until the gateway's
``POST /batch/run`` rings it, then runs every pending item (the request is kept in
the database too: a role that was starting or restarting when it rang runs as
soon as it listens);
``edge-agent batch --now [--progress]`` runs them once and exits. A run::

    release abandoned leases (expired, or held by a process that is gone)
    repeat: one transaction (BEGIN IMMEDIATE) records the finished chunks (result +
            outbox, only where the lease is still ours) and claims the next ones;
            pool threads predict the claimed chunks: the items of one model and
            shape go to the runtime as one batch

Only the role's main thread touches the database, so its transactions never
wait on each other, and each step costs one fsync. ``parallelism`` chunks
are in flight at once. Finished chunks are recorded in the same transaction
that leases their successors, so while work remains some of it is always
leased: a successor started after ``kill -9`` sees the interrupted run and
resumes it at once. SIGTERM finishes the chunks in flight, then exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import numpy as np

from edge_agent.bootstrap import build_engine, open_storage
from edge_agent.config import AgentConfig, BatchConfig
from edge_agent.errors import EdgeAgentError, InvalidInput
from edge_agent.runtime.engine import Engine
from edge_agent.storage import DiskFull, Storage, new_id
from edge_agent.workers.batch_items import BatchItems, Claimed, Completed, Outcome, decode_row, owner_id
from edge_agent.workers.doorbell import Listener
from edge_agent.workers.schedule import Schedule, batch_doorbell, schedule_from_config

logger = logging.getLogger(__name__)

LEASE_S = 120.0  # far longer than a chunk takes; a crashed local predecessor is detected sooner
MAX_ATTEMPTS = 3  # tries per item: a failing item is retried at the next runs, then marked failed
MAX_SLEEP_S = 30.0  # re-read the wall clock at least this often (a Pi sets its clock late)
PAUSE_S = 0.5  # first pause after the disk was full; doubles up to MAX_SLEEP_S while it stays full

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    parallelism: int = 2
    chunk: int = 32
    lease_s: float = LEASE_S
    max_attempts: int = MAX_ATTEMPTS

    @classmethod
    def from_config(cls, batch: BatchConfig) -> RunnerOptions:
        return cls(
            parallelism=batch.parallelism,
            chunk=batch.chunk,
            lease_s=batch.lease_s,
            max_attempts=batch.max_attempts,
        )


@dataclass(slots=True)
class RunStats:
    """What one run did; ``items_per_s`` is its throughput."""

    run_id: str
    pending: int = 0  # claimable when the run started
    recovered: int = 0  # abandoned items put back to pending first
    claimed: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0  # failed this time, tried again at a later run
    lost: int = 0  # their lease passed to another process first
    elapsed_s: float = 0.0
    stopped: bool = False  # SIGTERM: stopped before the pending items ran out

    def add(self, c: Completed) -> None:
        self.done += c.done
        self.failed += c.failed
        self.retried += c.retried
        self.lost += c.lost

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.retried + self.lost

    @property
    def items_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"batch run {self.run_id[:8]}: {self.done} done, {self.failed} failed, {self.retried} to retry"
            + (f", {self.lost} lost to another process" if self.lost else "")
            + (f", {self.recovered} recovered from an interrupted run" if self.recovered else "")
            + (", stopped early" if self.stopped else "")
            + f" in {self.elapsed_s:.2f} s ({self.items_per_s:.0f} items/s)"
        )


# -- prediction (pool threads; no database access) ---------------------------------
def predict_chunk(engine: Engine, items: Sequence[Claimed]) -> list[Outcome]:
    """Predict a chunk: one runtime call per (model, input shapes) group, sliced to the row limit."""
    outcomes: list[Outcome] = []
    groups: dict[tuple[Any, ...], list[tuple[Claimed, Any]]] = {}
    for item in items:
        if item.kind == "images":
            groups.setdefault((item.model, "images"), []).append((item, item.payload))
            continue
        try:
            row = decode_row(item.payload)
        except InvalidInput as exc:
            outcomes.append(Outcome(item.id, item.model, error=exc.message))
            continue
        key = (item.model, "tensors", *sorted((k, v.shape) for k, v in row.items()))
        groups.setdefault(key, []).append((item, row))
    step = engine.options.max_rows
    for (model, kind, *_), members in groups.items():
        for i in range(0, len(members), step):
            outcomes += _predict_group(engine, model, kind, members[i : i + step])
    return outcomes


def _predict_group(
    engine: Engine, model: str, kind: str, members: list[tuple[Claimed, Any]]
) -> list[Outcome]:
    try:
        if kind == "images":
            pred = engine.predict(model, images=[payload for _, payload in members])
        else:
            names = list(members[0][1])
            pred = engine.predict(model, {n: np.stack([row[n] for _, row in members]) for n in names})
    except Exception as exc:
        if len(members) > 1:  # find the bad item(s): the others still get their answers
            return [o for m in members for o in _predict_group(engine, model, kind, [m])]
        item = members[0][0]
        if isinstance(exc, EdgeAgentError):
            return [Outcome(item.id, model, error=exc.message, retry=not isinstance(exc, InvalidInput))]
        logger.exception("batch item %s: unexpected error", item.id)
        return [Outcome(item.id, model, error=f"internal error: {type(exc).__name__}: {exc}", retry=True)]
    return [
        Outcome(item.id, model, pred.version, result)
        for (item, _), result in zip(members, pred.results, strict=True)
    ]


# -- the runner ---------------------------------------------------------------------
class BatchRunner:
    def __init__(
        self, engine: Engine, storage: Storage, options: RunnerOptions, owner: str | None = None
    ) -> None:
        self.engine = engine
        self.items = BatchItems(storage)
        self.options = options
        self.owner = owner or owner_id()
        self._tried: dict[str, str] = {}

    def run_pending(self, progress: Progress | None = None, stop: threading.Event | None = None) -> RunStats:
        """Run every pending item once (items failing transiently wait for the next run)."""
        stats = RunStats(new_id())
        t0 = time.perf_counter()
        # nothing of this process is in flight between runs: items still leased to it are from a run
        # cut short (a full disk whose give-back could not be written either); they go back now
        # instead of waiting for their lease to expire
        stats.recovered = self.items.give_back(self.owner)
        stats.recovered += self.items.release_abandoned(self.options.max_attempts)
        self.items.answer_requests()  # requests made from here on get a run of their own
        stats.pending = self.items.count(statuses=("pending",))
        if stats.pending:
            self._follow_activations()
            if progress is not None:
                progress(0, stats.pending)
            with ThreadPoolExecutor(self.options.parallelism, thread_name_prefix="batch") as pool:
                stats.stopped = self._drain(pool, stats, progress, stop)
        stats.elapsed_s = time.perf_counter() - t0
        return stats

    def _drain(
        self,
        pool: ThreadPoolExecutor,
        stats: RunStats,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> bool:
        """Keep ``parallelism`` chunks in flight; each step records the finished chunks and claims
        their successors in one transaction (one fsync), so some work is leased until the end."""
        opts = self.options
        inflight: set[Future[list[Outcome]]] = set()
        finished: set[Future[list[Outcome]]] = set()
        more = True
        while True:
            outcomes = [o for fut in finished for o in fut.result()]
            stopping = stop is not None and stop.is_set()
            want = opts.chunk * (opts.parallelism - len(inflight)) if more and not stopping else 0
            if outcomes or want:
                completed, claimed = self.items.exchange(
                    self.owner, stats.run_id, outcomes, want, opts.lease_s, opts.max_attempts
                )
                stats.add(completed)
                stats.claimed += len(claimed)
                more = more and len(claimed) == want
                for k in range(0, len(claimed), opts.chunk):
                    inflight.add(pool.submit(predict_chunk, self.engine, claimed[k : k + opts.chunk]))
                if outcomes and progress is not None:
                    progress(stats.processed, max(stats.pending, stats.claimed))
            if not inflight:
                return more
            finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)

    def _follow_activations(self) -> None:
        """Another process (the gateway) may have activated or rolled back a version: follow it.
        A version that fails to load is tried once; the engine keeps serving its fallback."""
        for name in self.items.pending_models():
            serving = self.engine.active_version(name)
            try:
                wanted = self.engine.store.active_version(name)
            except EdgeAgentError:
                continue  # unknown model: its items fail one by one
            if serving is None or serving == wanted or self._tried.get(name) == wanted:
                continue
            self._tried[name] = wanted
            logger.info("model %s: version %s is active now (was %s); reloading", name, wanted, serving)
            try:
                self.engine.load(name)
            except EdgeAgentError as exc:
                logger.error("model %s: cannot load version %s: %s", name, wanted, exc.message)


# -- progress -----------------------------------------------------------------------
class ProgressBar:
    """``batch [######----] 960/2000  48%  1520 items/s`` redrawn in place on a terminal
    (10 times a second at most); elsewhere one plain line per tenth, so a log stays readable."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (ValueError, OSError):
            self.tty = False
        self.width = width
        self._t0 = time.perf_counter()
        self._drawn = -math.inf
        self._tenth = -1
        self._open_line = False

    def __call__(self, done: int, total: int) -> None:
        t = time.perf_counter()
        if done == 0:
            self._t0, self._tenth = t, -1
        frac = min(1.0, done / total) if total else 1.0
        rate = done / (t - self._t0) if t > self._t0 else 0.0
        text = f"{done}/{total} {frac:4.0%}  {rate:.0f} items/s"
        if self.tty:
            if done < total and t - self._drawn < 0.1:
                return
            fill = round(frac * self.width)
            self.stream.write(f"\rbatch [{'#' * fill}{'-' * (self.width - fill)}] {text}")
            self._open_line = done < total
            if not self._open_line:
                self.stream.write("\n")
        else:
            tenth = int(frac * 10)
            if tenth == self._tenth:
                return
            self._tenth = tenth
            self.stream.write(f"batch {text}\n")
        self._drawn = t
        self.stream.flush()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


# -- the role -----------------------------------------------------------------------
def serve(
    runner: BatchRunner,
    schedule: Schedule,
    listener: Listener,
    stop: threading.Event,
    wake_fd: int,
    progress: ProgressBar | None = None,
) -> None:
    """Run at every fire time and at every ring until ``stop``; resume an interrupted run at once."""
    try:
        due = runner.items.release_abandoned(runner.options.max_attempts) > 0
    except DiskFull as exc:  # started on a full disk: the first run retries it
        logger.warning("batch: %s", exc.message)
        due = True
    if due:
        logger.info("resuming a run interrupted by a stopped process")
    elif runner.items.run_requested():
        logger.info("running now: POST /batch/run was called while the role was not listening")
        due = True
    next_fire = schedule.next_after(time.time())
    pause_s = PAUSE_S
    while not stop.is_set():
        now = time.time()
        next_fire = min(next_fire, schedule.next_after(now))  # the clock may have been set back
        if not due and now < next_fire:
            rung = listener.wait(min(next_fire - now, MAX_SLEEP_S), also=(wake_fd,))
            if rung:
                listener.drain()
            # the database is the truth, a ring only a hint: a request whose ring was lost is
            # found at the next wake-up (30 s at most)
            due = rung or time.time() >= next_fire or runner.items.run_requested()
            continue
        if time.time() >= next_fire:
            next_fire = schedule.next_after(time.time())
        due = False
        try:
            stats = runner.run_pending(progress, stop)
            pause_s = PAUSE_S
        except DiskFull as exc:  # a state: the items stay pending; run again once there is room
            back = runner.items.give_back(runner.owner)
            logger.warning(
                "batch paused for %.0f s (%d items back to pending): %s", pause_s, back, exc.message
            )
            stop.wait(pause_s)
            pause_s = min(pause_s * 2, MAX_SLEEP_S)
            due = True
            continue
        except EdgeAgentError as exc:
            logger.error("batch run failed (the items stay pending): %s", exc.message)
            continue
        finally:
            if progress is not None:
                progress.close()
        if stats.claimed or stats.recovered:
            logger.info("%s", stats.summary())


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``batch`` role: ``--now`` runs the pending items once; otherwise on the schedule."""
    schedule = schedule_from_config(config.batch)  # an invalid cron fails before anything loads
    once = bool(getattr(args, "now", False))
    with contextlib.ExitStack() as stack:
        storage = open_storage(config)
        stack.callback(storage.close)
        listener: Listener | None = None
        if not once:
            # bound before the models load (seconds on a Pi): a ring while they load waits in the
            # socket instead of being lost until the next scheduled run
            doorbell = batch_doorbell(config.data_dir)
            stack.callback(doorbell.close)
            listener = stack.enter_context(doorbell.listen(f"batch-{os.getpid()}"))
        engine = build_engine(config)
        stack.callback(engine.close)
        runner = BatchRunner(engine, storage, RunnerOptions.from_config(config.batch))
        progress = ProgressBar() if getattr(args, "progress", False) else None
        stop = threading.Event()
        wake_r, wake_w = socket.socketpair()
        stack.callback(wake_r.close)
        stack.callback(wake_w.close)
        wake_w.setblocking(False)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()
            with contextlib.suppress(OSError):
                wake_w.send(b"!")

        if threading.current_thread() is threading.main_thread():  # (signals: main thread only)
            for sig in (signal.SIGTERM, signal.SIGINT):
                stack.callback(signal.signal, sig, signal.signal(sig, on_signal))
        if listener is None:
            stats = runner.run_pending(progress, stop)
            if progress is not None:
                progress.close()
            print(stats.summary())
            return 0
        logger.info("batch role ready: %s, doorbell %s", schedule, listener.path)
        serve(runner, schedule, listener, stop, wake_r.fileno(), progress)
        logger.info("batch role stopped")
        return 0
