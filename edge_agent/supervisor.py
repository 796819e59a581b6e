"""`edge-agent up`: start the configured roles as child processes, restart a
crashed one with exponential backoff, stop them all on SIGTERM.

Roles are named as in the role table; ``model@NAME`` runs ``edge-agent model
NAME``. Every child gets the supervisor's validated configuration through
``EDGE_*`` variables, so all roles agree on it. The status of every role is
written atomically to ``<data_dir>/roles-status.json`` for ``/health/all``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from edge_agent.config import AgentConfig, config_to_env
from edge_agent.roles import role_command
from edge_agent.rolestatus import status_path, write_status

logger = logging.getLogger(__name__)

STABLE_AFTER_S = 30.0
MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 10.0
TICK_S = 0.2


@dataclass(slots=True)
class Child:
    spec: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    last_exit: int | None = None
    stopped: bool = False

    def status(self) -> dict[str, Any]:
        running = self.proc is not None and self.proc.poll() is None
        return {
            "role": self.spec,
            "state": "running" if running else ("stopped" if self.stopped else "restarting"),
            "pid": self.proc.pid if running and self.proc else None,
            "since": self.started,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(self, config: AgentConfig, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.children = [
            Child(spec, [sys.executable, "-m", "edge_agent.cli", *role_command(spec)])
            for spec in config.up.roles
        ]
        self.status_path = status_path(config.data_dir)
        self._stopping = False

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env)
        child.started = time.time()
        logger.info("started %s (pid %d)", child.spec, child.proc.pid)

    def _backoff(self, child: Child) -> float:
        base = self.config.up.restart_backoff_s
        return float(min(MAX_BACKOFF_S, base * 2 ** min(child.restarts, 10)))

    def _write_status(self) -> None:
        doc = {
            "supervisor_pid": os.getpid(),
            "updated": time.time(),
            "roles": [c.status() for c in self.children],
        }
        try:
            write_status(self.status_path, doc)
        except OSError as exc:  # a full disk must not stop the supervisor: the roles matter more
            logger.warning("cannot write %s: %s", self.status_path, exc)

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for child in self.children:
            self._start(child)
        self._write_status()
        while not self._stopping:
            now = time.time()
            changed = False
            for child in self.children:
                proc = child.proc
                if proc is not None and proc.poll() is not None:
                    child.last_exit = proc.returncode
                    if now - child.started > STABLE_AFTER_S:
                        child.restarts = 0  # it ran fine for a while: start the backoff over
                    delay = self._backoff(child)
                    logger.error(
                        "%s exited with %s; restarting in %.1f s", child.spec, proc.returncode, delay
                    )
                    child.proc = None
                    child.next_start = now + delay
                    child.restarts += 1
                    changed = True
                elif proc is None and now >= child.next_start:
                    self._start(child)
                    changed = True
            if changed:
                self._write_status()
            time.sleep(TICK_S)
        return self._shutdown()

    def _shutdown(self) -> int:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("pid %d did not stop in %.0f s; killing it", proc.pid, STOP_GRACE_S)
                proc.kill()
                proc.wait()
        for child in self.children:
            child.stopped = True
        self._write_status()
        logger.info("all roles stopped")
        return 0


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``up`` role."""
    for spec in config.up.roles:
        role_command(spec)  # every spec checked before anything starts
    from edge_agent.repack import repack

    # one process owns the data directory until the roles start: an upgraded device's database
    # gets the page size new ones have (SD-card wear); the outcome is logged, start-up goes on
    repack(config.data_dir, reserve_bytes=config.storage.reserve_bytes)
    if (args.profile or config.up.profile) == "all-in-one":
        from edge_agent.allinone import run_all_in_one

        return run_all_in_one(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(config_to_env(config))
    return Supervisor(config, env).run()
