"""Where a runtime call runs: on the event loop when a thread hop would cost more, else a thread."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.runtime.batcher import INLINE_ALONE_MAX_S, INLINE_MAX_S, RunCost

X = {"x": np.zeros((1, 4), np.float32)}


def sleeper(seconds: float):  # type: ignore[no-untyped-def]
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(seconds)
        return inputs

    return run


def test_unknown_cost_goes_to_the_executor_first() -> None:
    assert not RunCost().inline(1, alone=True)


def test_a_tiny_call_runs_inline_even_under_load() -> None:
    cost = RunCost()
    assert cost.timed(lambda x: x, X, 1) is X
    assert cost.inline(1, alone=False) and cost.inline(32, alone=False)


def test_a_slow_call_runs_inline_only_alone_and_never_when_very_slow() -> None:
    cost = RunCost()
    cost.timed(sleeper(INLINE_MAX_S * 3), X, 1)  # sleep() overshoots, never undershoots
    measured = cost._per_row  # ~0.9 ms; more on a busy machine, so the rule is checked against it
    assert measured >= INLINE_MAX_S * 3
    assert not cost.inline(1, alone=False)
    assert cost.inline(1, alone=True) == (measured < INLINE_ALONE_MAX_S)
    assert not cost.inline(int(INLINE_ALONE_MAX_S / measured) + 1, alone=True)  # a batch of them


def test_the_average_follows_a_model_that_got_slower() -> None:
    cost = RunCost()
    cost.timed(lambda x: x, X, 1)
    assert cost.inline(1, alone=False)
    for _ in range(20):
        cost.timed(sleeper(INLINE_MAX_S * 2), X, 1)
    assert not cost.inline(1, alone=False)
