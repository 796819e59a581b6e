"""A runtime call for batcher tests: records the thread it ran on and takes a set time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

X = {"x": np.zeros((1, 4), np.float32)}


def recorder(seconds: float, threads: list[int]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        time.sleep(seconds)
        return {"y": inputs["x"] + 1.0}

    return run
