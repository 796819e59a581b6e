"""A real PostgreSQL server the tests (and the fleet bench) start themselves.

Debian's ``postgresql`` package (``make test`` installs it through scripts/sysdeps.sh): the
newest /usr/lib/postgresql/<version>/bin, ``initdb`` in a fresh temporary directory, the server
on a free loopback port with its unix socket in that directory, stopped and removed at the end.
PostgreSQL refuses to run as root: as root, the data directory is handed to the ``postgres``
user (the package creates it) and the server runs through ``runuser``.

Test servers skip fsync (``durable=False``): nothing here survives a power cut on purpose, and
a test that kills processes kills the ingest, not PostgreSQL. The bench's restarted-database
fault uses ``durable=True``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "postgres"
SUPERUSER = "cloud"


class PostgresMissing(RuntimeError):
    pass


def pg_bin() -> Path:
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresMissing(
            f"no PostgreSQL server under {PG_ROOT}: install Debian's postgresql package "
            "(make test does: scripts/sysdeps.sh postgresql:...)"
        )
    return versions[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self, *, durable: bool = False, max_connections: int = 300) -> None:
        self.bin = pg_bin()
        self.durable = durable
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                user = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PostgresMissing(
                    f"no {RUN_AS!r} user to run PostgreSQL as (the package creates it)"
                ) from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", RUN_AS, "--", *args] if self._as_root else list(args)
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=self.dir, timeout=120)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.dir}",
            f"-c max_connections={self.max_connections}",
        ]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", " ".join(opts), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def run_postgres(*, durable: bool = False) -> Iterator[PgServer]:
    server = PgServer(durable=durable)
    try:
        server.init()
        started = time.monotonic()
        server.start()
        if time.monotonic() - started > 60:
            raise RuntimeError("PostgreSQL took over a minute to start")
        yield server
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        raise RuntimeError(f"{exc.cmd[-1]} failed: {exc.stderr}\n{log}") from None
    finally:
        server.cleanup()
