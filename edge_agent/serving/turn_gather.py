"""Requests that reach the service in the same event-loop turn, computed as one group.

Under load the HTTP server reads many requests per turn of the event loop (one ``epoll`` wakes it for
every connection with data); each request's task then parses, validates and reaches the model in the
next turn. Computed one by one, a tiny model pays its whole fixed cost per request: the runtime call,
post-processing, the drift hand-off. ``TurnGather`` lets the first request of a turn (the leader) yield
once to the loop; every request for the same key that arrives meanwhile joins it, and the group is
computed by one call of ``run`` (one runtime call, one post-processing pass), each member getting its
own answer or its own error. A lone request costs one loop turn more, no task; and on an idle
gateway not even that: when a key's last group was a single request, the next one runs at once
(no turn to wait for: nothing else was arriving), unless another request of that key already
started in the same turn, which then leads a group as under load. So a gateway that turns busy
computes one request alone before it groups again, and an idle one answers a turn sooner.

A group holds at most ``limit`` rows (the model's ``max_batch_size``); a request that would overflow
it opens the next group. A group of several runs in a task of its own, so a leader whose caller goes
away (cancelled) does not strand the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Group(Generic[T, R]):
    __slots__ = ("futures", "items", "rows")

    def __init__(self, item: T, rows: int) -> None:
        self.items = [item]
        self.futures: list[asyncio.Future[R] | None] = [None]  # the leader waits without one
        self.rows = rows


class TurnGather(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        """``run(items)`` answers each item, in order (an item's failure as an exception in the list
        is not supported: ``run`` isolates failures itself and raises only what every item shares)."""
        self._run = run
        self._open: dict[Hashable, _Group[T, R]] = {}
        self._lone: set[Hashable] = set()  # keys whose last group was a single request
        self._this_turn: set[Hashable] = set()  # keys that ran a request at once in this loop turn

    def clear(self) -> None:
        """A new event loop (application restart): groups of the old one are gone."""
        self._open.clear()
        self._lone.clear()
        self._this_turn.clear()

    async def submit(self, key: Hashable, item: T, rows: int, limit: int) -> R:
        group = self._open.get(key)
        if group is not None and group.rows + rows <= limit:
            fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            group.items.append(item)
            group.futures.append(fut)
            group.rows += rows
            return await fut
        if group is None and key in self._lone and key not in self._this_turn:
            # idle: nothing joined the last request; run this one now (a burst's first does, and
            # marks the turn, so that the rest of the burst, started in this turn, groups)
            self._this_turn.add(key)
            asyncio.get_running_loop().call_soon(self._this_turn.discard, key)
            return (await self._run([item]))[0]
        group = self._open[key] = _Group(item, rows)
        try:
            await asyncio.sleep(0)  # one turn: requests being read now join
        except asyncio.CancelledError:
            self._close(key, group)
            if len(group.items) > 1:  # the others still want their answers
                self._spawn(group.items[1:], group.futures[1:])
            raise
        self._close(key, group)
        if len(group.items) == 1:
            self._lone.add(key)
            return (await self._run(group.items))[0]
        self._lone.discard(key)
        mine: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._spawn(group.items, [mine, *group.futures[1:]])
        return await mine

    def _close(self, key: Hashable, group: _Group[T, R]) -> None:
        if self._open.get(key) is group:
            del self._open[key]

    def _spawn(self, items: list[T], futures: list[asyncio.Future[R] | None]) -> None:
        task = asyncio.get_running_loop().create_task(self._resolve(items, futures))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    async def _resolve(self, items: list[T], futures: list[asyncio.Future[R] | None]) -> None:
        try:
            answers = await self._run(items)
        except asyncio.CancelledError:
            for f in futures:
                if f is not None:
                    f.cancel()
            raise
        except Exception as exc:
            for f in futures:
                if f is not None and not f.done():
                    f.set_exception(exc)
            return
        for f, answer in zip(futures, answers, strict=True):
            if f is not None and not f.done():
                f.set_result(answer)


_RUNNING: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
