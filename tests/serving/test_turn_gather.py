"""TurnGather: the requests of one event-loop turn computed as one group, each answered alone."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.serving.turn_gather import TurnGather


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await asyncio.sleep(0.001)  # a runtime call in a thread, say
        if self.fail:
            raise ValueError("boom")
        return [i * 10 for i in items]


def test_one_turn_is_one_group_and_each_gets_its_own_answer() -> None:
    rec = Recorder()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[int]:
        return await asyncio.gather(*(gather.submit("m", i, 1, 64) for i in range(10)))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert rec.calls == [list(range(10))]


def test_a_lone_request_runs_alone_and_keys_do_not_mix() -> None:
    rec = Recorder()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[int]:
        first = await gather.submit("a", 1, 1, 64)
        both = await asyncio.gather(gather.submit("a", 2, 1, 64), gather.submit("b", 3, 1, 64))
        return [first, *both]

    assert asyncio.run(main()) == [10, 20, 30]
    assert rec.calls == [[1], [2], [3]]


def test_groups_hold_at_most_limit_rows() -> None:
    rec = Recorder()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[int]:
        return await asyncio.gather(*(gather.submit("m", i, 2, 5) for i in range(5)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert sorted(len(c) for c in rec.calls) == [1, 2, 2]  # 2 rows each: two per group of 5


def test_a_failing_group_fails_every_member_with_its_error() -> None:
    gather: TurnGather[int, int] = TurnGather(Recorder(fail=True).run)

    async def main() -> list[int | BaseException]:
        return await asyncio.gather(*(gather.submit("m", i, 1, 64) for i in range(3)), return_exceptions=True)

    out = asyncio.run(main())
    assert all(isinstance(e, ValueError) for e in out), out


def test_a_cancelled_leader_does_not_strand_the_others() -> None:
    rec = Recorder()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[int]:
        leader = asyncio.ensure_future(gather.submit("m", 0, 1, 64))
        others = [asyncio.ensure_future(gather.submit("m", i, 1, 64)) for i in (1, 2)]
        await asyncio.sleep(0)  # the leader waits for its turn, the others joined it
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return list(await asyncio.gather(*others))

    assert asyncio.run(main()) == [10, 20]
    assert rec.calls == [[1, 2]]


class Instant:
    """A runtime call that does not wait (as one running on the event loop does)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        return [i * 10 for i in items]


def test_an_idle_key_answers_without_waiting_a_loop_turn() -> None:
    rec = Instant()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[str]:
        order: list[str] = []
        loop = asyncio.get_running_loop()
        for i in range(3):
            loop.call_soon(order.append, f"turn {i}")  # runs when the loop gets a turn
            await gather.submit("m", i, 1, 64)
            order.append(f"answer {i}")
            await asyncio.sleep(0)
        return order

    # the first request waits one turn for others (there were none); from then on the key is idle
    assert asyncio.run(main()) == ["turn 0", "answer 0", "answer 1", "turn 1", "answer 2", "turn 2"]
    assert rec.calls == [[0], [1], [2]]


def test_a_burst_after_idle_runs_its_first_alone_and_groups_the_rest() -> None:
    rec = Instant()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> list[int]:
        await gather.submit("m", 100, 1, 64)  # alone: the key is idle now
        burst = await asyncio.gather(*(gather.submit("m", i, 1, 64) for i in range(10)))
        again = await asyncio.gather(*(gather.submit("m", i, 1, 64) for i in range(20, 25)))
        return [*burst, *again]

    assert asyncio.run(main()) == [i * 10 for i in (*range(10), *range(20, 25))]
    # idle -> the burst's first at once, the other nine in one group; the key is busy then, so the
    # next burst is one group
    assert rec.calls == [[100], [0], list(range(1, 10)), list(range(20, 25))]


def test_clear_forgets_that_a_key_was_idle() -> None:
    rec = Instant()
    gather: TurnGather[int, int] = TurnGather(rec.run)

    async def main() -> None:
        await gather.submit("m", 1, 1, 64)
        gather.clear()
        await asyncio.gather(*(gather.submit("m", i, 1, 64) for i in range(3)))

    asyncio.run(main())
    assert rec.calls == [[1], [0, 1, 2]]
