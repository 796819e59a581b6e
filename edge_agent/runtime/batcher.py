"""Dynamic micro-batching in front of one loaded model.

Requests for the same model that arrive while the runtime is busy are
gathered into one runtime call (up to ``max_batch_size`` rows), then the
outputs are split back. An idle batcher never waits: a request that finds the
runtime free runs at once, alone. Only when the previous call was itself a
batch (the model is under load) does the batcher wait up to
``max_queue_delay`` for more rows. Each request has a deadline; one still
queued when it passes is answered with ``QueueTimeout`` instead of hanging.
If a gathered batch fails, each request is retried alone, so one request's
error stays that request's.

A runtime call that takes less than ``INLINE_MAX_S`` (a tiny model) runs on the
event loop itself: handing it to a thread and back costs more than the call.
Slower calls go to the executor, so the loop keeps reading requests meanwhile,
except in a process that has one core (``cores.usable_cores``): there the
executor's thread and the loop would share that core, so a call expected under
``INLINE_ONE_CORE_MAX_S`` runs on the loop too, and the requests that arrive
meanwhile wait in the socket buffers to be read, all together, into the next
batch. ``RunCost`` keeps the moving average that decides.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import EdgeAgentError, InferenceError
from edge_agent.runtime.cores import usable_cores

Tensors = dict[str, np.ndarray]
IDLE_YIELDS = 3  # event-loop turns without a new request before a gathering batch runs
RunFn = Callable[[Tensors], Tensors]
INLINE_MAX_S = 0.0003  # runtime calls expected to be shorter than this run on the event loop
INLINE_ALONE_MAX_S = 0.005  # ... and up to this when nothing else is queued or computing
INLINE_ONE_CORE_MAX_S = 0.2  # ... and up to this in a process with one core (the loop then waits
# for the call: /health and other routes are answered after it, so a bound keeps that short)


class RunCost:
    """Moving average of one model's runtime cost per row, to choose where a call runs.

    On the event loop when the call is expected to take less than a thread hop would cost
    (``INLINE_MAX_S``), or when it is alone (nothing else queued or computing: no request
    is kept waiting) and short (``INLINE_ALONE_MAX_S``), or, for a call already gathered
    (``gathered``: a batch about to run, or a request that is not batched), when the process has
    one core and the call is not long (``INLINE_ONE_CORE_MAX_S``: the executor's thread would
    only take turns with the loop on that core); otherwise in the executor, so the loop keeps reading requests
    meanwhile. Unknown at first: the first call goes to the executor. Every call is timed where
    it runs, so a model that got slower moves back. ``cores``: the process's usable cores
    (default: ``usable_cores()``)."""

    __slots__ = ("_one_core", "_per_row")

    def __init__(self, cores: int | None = None) -> None:
        self._per_row = 1.0
        self._one_core = (usable_cores() if cores is None else cores) == 1

    def inline(self, rows: int, alone: bool, gathered: bool = False) -> bool:
        expected = self._per_row * rows
        return (
            expected < INLINE_MAX_S
            or (alone and expected < INLINE_ALONE_MAX_S)
            or (gathered and self._one_core and expected < INLINE_ONE_CORE_MAX_S)
        )

    def timed(self, fn: Callable[[Tensors], Tensors], inputs: Tensors, rows: int) -> Tensors:
        """``fn(inputs)``, its duration per row (in whichever thread runs it) added to the average."""
        t0 = time.perf_counter()
        out = fn(inputs)
        per_row = (time.perf_counter() - t0) / max(1, rows)
        self._per_row = per_row if self._per_row == 1.0 else self._per_row + (per_row - self._per_row) * 0.2
        return out


class QueueTimeout(EdgeAgentError):
    status = 504
    code = "queue_timeout"


@dataclass(slots=True)
class _Item:
    inputs: Tensors
    rows: int
    signature: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[tuple[Tensors, float]]
    enqueued: float = field(default_factory=time.perf_counter)


def _signature(inputs: Tensors) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((k, v.shape[1:]) for k, v in sorted(inputs.items()))


class Batcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_batch_size: int = 32,
        max_queue_delay_s: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
        cores: int | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch = 1
        self._busy = False  # a batch is being run by the loop task
        self.cost = RunCost(cores)

    async def submit(self, inputs: Tensors, timeout_s: float) -> tuple[Tensors, float]:
        """Run ``inputs`` (validated, one batch size) and return (outputs, seconds queued)."""
        rows = int(next(iter(inputs.values())).shape[0])
        if not self._pending and not self._busy and self.cost.inline(rows, alone=self._last_batch == 1):
            # idle: a tiny call runs now (no queue, no task switch); so does a short one when nothing
            # else is queued or computing and the last call was not a batch (no load: what the loop
            # task would do with it a few turns later); under load the loop task gathers a batch
            return self._run_now(inputs, rows), 0.0
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut: asyncio.Future[tuple[Tensors, float]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(inputs, rows, _signature(inputs), fut))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.CancelledError:
            fut.cancel()  # the caller went away
            raise
        except TimeoutError:
            fut.cancel()  # still queued: the loop will skip it; running: its result is dropped
            raise QueueTimeout(
                f"no answer within {timeout_s * 1000:.0f} ms: the model is overloaded; retry later",
                timeout_ms=round(timeout_s * 1000),
            ) from None

    def _run_now(self, inputs: Tensors, rows: int) -> Tensors:
        """A lone tiny call, run here on the event loop (nothing is queued or running)."""
        self._last_batch = 1
        if self._on_batch is not None:
            self._on_batch(rows)
        try:
            return self.cost.timed(self._run, inputs, rows)
        except EdgeAgentError:
            raise
        except Exception as exc:
            raise InferenceError(f"inference failed: {exc}") from None

    def _take(self, batch: list[_Item], rows: int) -> int:
        while self._pending:
            item = self._pending[0]
            if item.future.done():
                self._pending.popleft()
                continue
            if batch and (item.signature != batch[0].signature or rows + item.rows > self.max_batch_size):
                break
            batch.append(self._pending.popleft())
            rows += item.rows
        return rows

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._busy = True  # from taking a batch to its answers: submit() does not jump it
            try:
                batch: list[_Item] = []
                rows = self._take(batch, 0)
                if self._last_batch > 1 and rows < self.max_batch_size and self.max_queue_delay_s > 0:
                    # Under load: gather more, but only while requests keep arriving. Yield to the
                    # event loop (requests being parsed get queued) and stop after a few idle yields
                    # or at the delay, whichever comes first: a fixed sleep would idle the runtime.
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + self.max_queue_delay_s
                    idle = 0
                    while rows < self.max_batch_size and idle < IDLE_YIELDS and loop.time() < deadline:
                        await asyncio.sleep(0)
                        more = self._take(batch, rows)
                        idle = 0 if more > rows else idle + 1
                        rows = more
                batch = [it for it in batch if not it.future.done()]
                if not batch:
                    continue
                self._last_batch = len(batch)
                await self._execute(batch)
            finally:
                self._busy = False

    async def _execute(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if self._on_batch is not None:
            self._on_batch(sum(it.rows for it in batch))
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {k: np.concatenate([it.inputs[k] for it in batch]) for k in batch[0].inputs}
        try:
            rows = sum(it.rows for it in batch)
            # Alone (one request, none queued: low load) a short call runs on the loop: the thread
            # hop is what c=1 latency would pay for nothing. Requests that arrive meanwhile are
            # read right after and gathered into the next batch, which goes to the executor.
            # With one core, a batch runs on the loop too (see RunCost).
            if self.cost.inline(rows, alone=len(batch) == 1 and not self._pending, gathered=True):
                outputs = self.cost.timed(self._run, merged, rows)
            else:
                outputs = await loop.run_in_executor(self._executor, self.cost.timed, self._run, merged, rows)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for item in batch:  # isolate the failing request(s)
                try:
                    out = await loop.run_in_executor(self._executor, self._run, item.inputs)
                    _resolve(item, out, started)
                except Exception as item_exc:
                    _fail(item, item_exc)
            return
        offset = 0
        for item in batch:
            sliced = {k: v[offset : offset + item.rows] for k, v in outputs.items()}
            offset += item.rows
            _resolve(item, sliced, started)


def _resolve(item: _Item, outputs: Tensors, started: float) -> None:
    if not item.future.done():
        item.future.set_result((outputs, started - item.enqueued))


def _fail(item: _Item, exc: Exception) -> None:
    if item.future.done():
        return
    if not isinstance(exc, EdgeAgentError):
        exc = InferenceError(f"inference failed: {exc}")
    item.future.set_exception(exc)
