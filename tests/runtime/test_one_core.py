"""A process with one usable core runs gathered runtime calls on the event loop: a thread would only
take turns with the loop on that core. Usable cores = affinity mask capped by a cgroup v2 quota."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_agent.runtime import cores
from edge_agent.runtime.batcher import INLINE_ALONE_MAX_S, INLINE_ONE_CORE_MAX_S, Batcher, RunCost
from tests.batcher_helpers import X, recorder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("100000 100000\n", 1),
        ("50000 100000", 1),
        ("150000 100000", 2),  # 1.5 cores of time: two threads do run at once part of the time
        ("400000 100000", 4),
        ("garbage", None),
        ("0 100000", None),
        ("", None),
    ],
)
def test_a_cgroup_quota_in_cores(text: str, expected: int | None) -> None:
    assert cores.quota_cores(text) == expected


def test_usable_cores_are_the_affinity_capped_by_the_quota() -> None:
    assert cores.count(4, None) == 4
    assert cores.count(4, "max 100000") == 4
    assert cores.count(4, "100000 100000") == 1  # docker --cpus=1 on a 4-core Pi
    assert cores.count(1, "400000 100000") == 1  # taskset -c 0 under a generous quota
    assert cores.count(0, None) == 1


def test_a_process_pinned_to_one_core_counts_one() -> None:
    core = min(os.sched_getaffinity(0))
    code = "from edge_agent.runtime.cores import usable_cores; print(usable_cores())"
    out = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"


def test_one_core_runs_a_gathered_call_inline_and_two_cores_do_not() -> None:
    seconds = INLINE_ALONE_MAX_S * 3  # too long to run alone on the loop with cores to spare
    for n, inline in ((1, True), (2, False)):
        cost = RunCost(cores=n)
        cost.timed(recorder(seconds, []), X, 1)
        assert not cost.inline(1, alone=True)  # the idle path never changes: it gathers first
        assert cost.inline(1, alone=False, gathered=True) is inline
        rows_over = int(INLINE_ONE_CORE_MAX_S / cost._per_row) + 1
        assert not cost.inline(rows_over, alone=False, gathered=True)  # a long batch: the executor


def test_a_one_core_batcher_runs_its_batches_on_the_loop_and_still_batches() -> None:
    seconds = INLINE_ALONE_MAX_S * 1.5  # over the "alone" bound: with two cores, the executor

    def scenario(n: int) -> tuple[int, list[int], list[int]]:
        threads: list[int] = []

        async def main() -> tuple[int, list[int]]:
            sizes: list[int] = []
            with ThreadPoolExecutor(2) as pool:
                batcher = Batcher(
                    recorder(seconds, threads), pool, max_batch_size=8, on_batch=sizes.append, cores=n
                )
                await batcher.submit(X, 5.0)  # unknown cost: measured in the executor first
                answers = await asyncio.gather(*(batcher.submit(X, 5.0) for _ in range(6)))
                assert all(out["y"][0, 0] == 1.0 for out, _ in answers)
            return threading.get_ident(), sizes

        loop_thread, sizes = asyncio.run(main())
        return loop_thread, threads, sizes

    loop_thread, threads, sizes = scenario(1)
    assert threads[0] != loop_thread and threads[1:] and set(threads[1:]) == {loop_thread}
    assert sum(sizes) == 7 and max(sizes) > 1, sizes  # gathered, then run on the loop
    loop_thread, threads, sizes = scenario(2)
    assert loop_thread not in threads and sum(sizes) == 7
