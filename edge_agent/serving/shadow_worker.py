"""The staged candidate in a process of its own, at the lowest CPU priority.

Shadow evaluation must not slow the caller. In a thread of the gateway the candidate shares the
GIL and the cores with the answers callers wait for; in its own process (spawned, ``nice 19``) it
shares only the cores, and the scheduler gives those to the gateway first. One request at a time
over a pipe: (model, version, tensors, images) -> (outputs, results, compute ms) or an error. The
process starts with the first sample and is stopped when no model has a staged version.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.engine import EngineOptions

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 60.0


def _serve(root: Path, state_path: Path, options: EngineOptions, conn: Connection) -> None:
    """The child: load candidates on demand (verified, self-tested), answer until the pipe closes."""
    with contextlib.suppress(OSError):
        os.nice(19)
    from edge_agent.runtime.engine import Engine
    from edge_agent.runtime.store import ModelStore

    engine = Engine(ModelStore(root, state_path), options)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        model, version, tensors, images = msg
        t0 = time.perf_counter()
        try:
            pred = engine.predict(model, tensors, images=images, version=version)
            conn.send(("ok", pred.outputs, pred.results, (time.perf_counter() - t0) * 1000.0))
        except EdgeAgentError as exc:
            conn.send(("error", exc.message))
        except Exception as exc:  # a broken candidate answers with its error, never kills the child
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    engine.close()


class CandidateProcess:
    def __init__(self, root: Path, state_path: Path, options: EngineOptions) -> None:
        self.root, self.state_path, self.options = root, state_path, options
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None

    def predict(
        self,
        model: str,
        version: str,
        tensors: Mapping[str, np.ndarray] | None,
        images: Sequence[bytes] | None,
    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], float]:
        """The candidate's (outputs, results, compute ms); EdgeAgentError when it fails."""
        conn = self._start()
        try:
            conn.send((model, version, dict(tensors) if tensors is not None else None, images))
            if not conn.poll(REPLY_TIMEOUT_S):
                self.close()
                raise EdgeAgentError(f"the shadow process gave no answer within {REPLY_TIMEOUT_S:.0f} s")
            reply = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.close()
            raise EdgeAgentError(
                "the shadow process ended; it is started again with the next sample"
            ) from None
        if reply[0] != "ok":
            raise EdgeAgentError(str(reply[1]))
        return reply[1], reply[2], float(reply[3])

    def _start(self) -> Connection:
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            return self._conn
        self.close()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_serve, args=(self.root, self.state_path, self.options, child), name="shadow", daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        logger.info("shadow process started (pid %s)", proc.pid)
        return parent

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def close(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
            conn.close()
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
