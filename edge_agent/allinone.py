"""The all-in-one profile: every pattern in ONE process, for the smallest devices.

The same topology as ``edge-agent up`` (same ports, same URLs, same SQLite
file), but one Python process and one copy of each model: the gateway, the
prep service and each ``model@NAME`` service are uvicorn servers on one
event loop; the worker, batch and camera loops are threads sharing the
gateway's engine. SIGTERM stops the servers and the loops together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from edge_agent.config import AgentConfig
from edge_agent.roles import role_command
from edge_agent.runtime.engine import Engine

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the profile (one handler stops every server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: Any, config: AgentConfig, port: int) -> uvicorn.Server:
    from edge_agent.serving.server import GRACEFUL_SHUTDOWN_S

    return _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=port,
            log_level=config.log_level.lower(),
            access_log=False,
            http="httptools",
            loop="none",
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class AllInOne:
    def __init__(self, config: AgentConfig) -> None:
        from edge_agent.serving.app import create_app

        self.config = config
        self.stop = threading.Event()
        self.app = create_app(config)
        self.engine: Engine = self.app.state.gateway.engine
        self.servers: list[uvicorn.Server] = [_server(self.app, config, config.port)]
        self.threads: list[threading.Thread] = []
        self._wakers: list[Callable[[], None]] = []
        specs = [role_command(spec) for spec in config.up.roles]
        for cmd in specs:
            if cmd[0] == "prep":
                self._add_prep()
            elif cmd[0] == "model":
                self._add_model(cmd[1])
            elif cmd[0] == "worker":
                self._add_worker()
            elif cmd[0] == "batch":
                self._add_batch()
            elif cmd[0] == "camera":
                self._add_camera()
        logger.info("all-in-one: %s in one process", ", ".join(config.up.roles))

    # -- parts ------------------------------------------------------------------------
    def _add_prep(self) -> None:
        from edge_agent.services.model_server import wrap
        from edge_agent.services.prep import PrepService, create_app

        service = PrepService(self.engine.store, self.config.max_image_pixels)
        self.servers.append(
            _server(wrap(create_app(service), self.config), self.config, self.config.services.prep_port)
        )

    def _add_model(self, name: str) -> None:
        from edge_agent.services.model_server import ModelService, create_app, resolve_port, wrap

        service = ModelService(self.engine, name)
        port = resolve_port(self.config, name, None)
        self.servers.append(_server(wrap(create_app(service), self.config), self.config, port))

    def _add_worker(self) -> None:
        from edge_agent.workers.worker import Worker, default_id

        worker = Worker(self.config, default_id(), engine=self.engine)
        r, w = socket.socketpair()
        w.setblocking(False)
        r.setblocking(False)

        def wake() -> None:
            worker.stop()
            with contextlib.suppress(OSError):
                w.send(b"!")

        def loop() -> None:
            try:
                worker.serve(wake_fd=r.fileno())
            finally:
                worker.close()

        self._wakers.append(wake)
        self.threads.append(threading.Thread(target=loop, name="worker", daemon=True))

    def _add_batch(self) -> None:
        import os

        from edge_agent.bootstrap import open_storage
        from edge_agent.workers.batch import BatchRunner, RunnerOptions, serve
        from edge_agent.workers.schedule import batch_doorbell, schedule_from_config

        schedule = schedule_from_config(self.config.batch)
        runner = BatchRunner(
            self.engine, open_storage(self.config), RunnerOptions.from_config(self.config.batch)
        )
        r, w = socket.socketpair()
        w.setblocking(False)

        def wake() -> None:
            with contextlib.suppress(OSError):
                w.send(b"!")

        def loop() -> None:
            doorbell = batch_doorbell(self.config.data_dir)
            try:
                with doorbell.listen(f"batch-{os.getpid()}") as listener:
                    serve(runner, schedule, listener, self.stop, r.fileno())
            finally:
                doorbell.close()

        self._wakers.append(wake)
        self.threads.append(threading.Thread(target=loop, name="batch", daemon=True))

    def _add_camera(self) -> None:
        import argparse

        from edge_agent.bootstrap import open_storage
        from edge_agent.workers.camera import STATUS_FILE, CameraLoop, CameraOptions

        options = CameraOptions.from_config(self.config, argparse.Namespace(source=None, max_frames=None))
        camera = CameraLoop(
            self.engine, open_storage(self.config), options, self.config.data_dir / STATUS_FILE
        )
        self.threads.append(
            threading.Thread(target=camera.run, args=(self.stop,), name="camera", daemon=True)
        )

    # -- running ------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.stop.set()
        for wake in self._wakers:
            wake()
        for server in self.servers:
            server.should_exit = True

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown)
        await asyncio.gather(*(s.serve() for s in self.servers))

    def run(self) -> int:
        for t in self.threads:
            t.start()
        try:
            asyncio.run(self._serve())
        finally:
            self.shutdown()
            for t in self.threads:
                t.join(timeout=10)
        logger.info("all-in-one stopped")
        return 0


def run_all_in_one(config: AgentConfig) -> int:
    return AllInOne(config).run()
