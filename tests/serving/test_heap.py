"""heap.settle: the collector stops walking what is loaded and runs less often; an embedding
process that switched collection off keeps it off."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from edge_agent.serving import heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("restore_gc")
def test_settle_freezes_the_heap_and_raises_the_first_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.GEN0_THRESHOLD, 10, 10)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # cyclic garbage made after the freeze is still collected


@pytest.mark.usefixtures("restore_gc")
def test_settle_leaves_collection_switched_off() -> None:
    gc.set_threshold(0)
    heap.settle()
    assert gc.get_threshold()[0] == 0
