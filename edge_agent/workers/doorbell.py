"""Wake idle workers the moment a job is queued: no polling, no broker.

Each worker binds one Unix datagram socket in ``<data_dir>/doorbell/`` and
blocks in ``select()`` on it. Whoever queues a job sends one byte to every
socket there (``ring``); a socket nobody listens on any more (a worker killed
with ``kill -9``) answers ``ECONNREFUSED`` and is removed. A ring is only a
hint: the database is the truth, so a lost or extra ring costs nothing but a
look at the queue.

AF_UNIX paths are limited to 107 bytes. When the directory's path is longer,
sockets are addressed through ``/proc/self/fd/<dir fd>/<name>`` (Linux),
which resolves to the same file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import socket
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

DIR_NAME = "doorbell"
SUFFIX = ".sock"
_MAX_PATH = 100  # sun_path holds 108 bytes with the NUL; keep a margin


class DoorbellError(EdgeAgentError):
    """The wake-up socket cannot be set up (directory not writable, id in use...)."""

    status = 503
    code = "doorbell_unavailable"


def socket_name(worker_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)[:48] + SUFFIX


class Doorbell:
    """The directory of worker sockets, seen from one process."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / DIR_NAME
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise DoorbellError(f"cannot use {self.dir}: {exc.strerror}") from None
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)

    def address(self, name: str) -> str:
        path = str(self.dir / name)
        return path if len(os.fsencode(path)) <= _MAX_PATH else f"/proc/self/fd/{self._dirfd}/{name}"

    def ring(self) -> int:
        """Wake every listening worker; returns how many were rung."""
        rung = 0
        try:
            names = [n for n in os.listdir(self._dirfd) if n.endswith(SUFFIX)]
        except OSError as exc:
            logger.warning("cannot list %s: %s", self.dir, exc.strerror)
            return 0
        for name in names:
            if self._send(name):
                rung += 1
        return rung

    def _send(self, name: str) -> bool:
        try:
            self._sender.sendto(b"j", self.address(name))
        except BlockingIOError:
            return True  # its queue is full of rings already: it will look
        except (ConnectionRefusedError, FileNotFoundError):
            self._remove_stale(name)
            return False
        except OSError as exc:
            logger.warning("cannot ring %s: %s", name, exc.strerror)
            return False
        return True

    def _remove_stale(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dirfd)
            logger.info("removed stale doorbell socket %s", name)

    def listen(self, worker_id: str) -> Listener:
        return Listener(self, socket_name(worker_id))

    def close(self) -> None:
        self._sender.close()
        with contextlib.suppress(OSError):
            os.close(self._dirfd)


class Listener:
    """One worker's socket: ``wait()`` blocks until a ring, a deadline or another fd."""

    def __init__(self, doorbell: Doorbell, name: str) -> None:
        self._doorbell = doorbell
        self.name = name
        self.path = doorbell.dir / name
        address = doorbell.address(name)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            self._claim_name(address)
            self._sock.bind(address)
        except OSError as exc:
            self._sock.close()
            raise DoorbellError(f"cannot bind {self.path}: {exc.strerror}") from None

    def _claim_name(self, address: str) -> None:
        """Take over a socket file left by a dead process; refuse one a live worker holds."""
        if not self.path.exists():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        probe.setblocking(False)
        try:
            probe.sendto(b"j", address)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            return
        finally:
            probe.close()
        raise DoorbellError(f"another live worker listens on {self.path}: give each worker its own --id")

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float | None, also: Sequence[int] = ()) -> bool:
        """Block until rung (True), ``timeout`` passed, or an fd in ``also`` is readable."""
        ready, _, _ = select.select([self._sock.fileno(), *also], [], [], timeout)  # EINTR retried (PEP 475)
        return self._sock.fileno() in ready

    def drain(self) -> int:
        """Consume pending rings; the caller then looks at the queue once for all of them."""
        n = 0
        while True:
            try:
                self._sock.recv(64)
            except BlockingIOError:
                return n
            n += 1

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._doorbell.address(self.name))

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
