"""An idle batcher runs a short call at once on the event loop: no queue, no loop task, no thread hop
(the c=1 latency of a model of a millisecond or two); anything else still goes through the queue."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from edge_agent.runtime.batcher import INLINE_ALONE_MAX_S, INLINE_MAX_S, Batcher
from tests.batcher_helpers import X, recorder


def test_an_idle_batcher_runs_a_short_call_on_the_loop_without_its_task() -> None:
    threads: list[int] = []
    seconds = INLINE_MAX_S * 3  # over the "tiny" bound, well under the "alone" one

    async def main() -> tuple[int, list[float]]:
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(recorder(seconds, threads), pool, max_batch_size=8, cores=2)
            await batcher.submit(X, 5.0)  # unknown cost: measured in the executor first
            queued = []
            for _ in range(3):
                out, waited = await batcher.submit(X, 5.0)
                assert out["y"][0, 0] == 1.0
                queued.append(waited)
            assert batcher._task is not None and not batcher._task.done()  # the first call started it
            return threading.get_ident(), queued

    loop_thread, queued = asyncio.run(main())
    assert threads[0] != loop_thread
    assert threads[1:] == [loop_thread] * 3
    assert queued == [0.0, 0.0, 0.0]


def test_a_call_too_long_to_run_alone_still_goes_to_the_executor() -> None:
    threads: list[int] = []

    async def main() -> int:
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(recorder(INLINE_ALONE_MAX_S * 1.5, threads), pool, max_batch_size=8, cores=2)
            for _ in range(2):
                await batcher.submit(X, 5.0)
            return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) == 2 and loop_thread not in threads


def test_concurrent_requests_are_still_batched_behind_a_busy_runtime() -> None:
    threads: list[int] = []

    async def main() -> list[int]:
        sizes: list[int] = []
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(
                recorder(INLINE_ALONE_MAX_S * 1.5, threads),
                pool,
                max_batch_size=8,
                on_batch=sizes.append,
                cores=2,
            )
            await batcher.submit(X, 5.0)  # the cost is known: too long to run on the loop
            answers = await asyncio.gather(*(batcher.submit(X, 5.0) for _ in range(6)))
            assert all(out["y"].shape == (1, 4) for out, _ in answers)
        return sizes

    sizes = asyncio.run(main())
    assert sum(sizes) == 7 and max(sizes) > 1, sizes


def test_after_a_batch_a_lone_request_goes_through_the_queue_once() -> None:
    """Under load (the last call was a batch) the loop task gathers; once a call ran alone, the
    next lone request runs at once again."""
    threads: list[int] = []

    async def main() -> tuple[list[int], list[float]]:
        sizes: list[int] = []
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(
                recorder(INLINE_MAX_S * 3, threads), pool, max_batch_size=8, on_batch=sizes.append, cores=2
            )
            first = asyncio.create_task(batcher.submit(X, 5.0))  # unknown cost: to the executor
            while not batcher._busy:
                await asyncio.sleep(0)
            await asyncio.gather(first, *(batcher.submit(X, 5.0) for _ in range(3)))  # queued behind it
            waited = [(await batcher.submit(X, 5.0))[1] for _ in range(2)]
        return sizes, waited

    sizes, (first, second) = asyncio.run(main())
    assert sizes[:2] == [1, 3], sizes  # the three that came while the runtime was busy: one batch
    assert first > 0.0  # after a batch: queued, the loop task took it (and would gather what came)
    assert second == 0.0  # the model is idle again: at once
