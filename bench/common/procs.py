"""Child processes of a benchmark: a launcher that dies with the benchmark, free loopback ports
and an environment without the agent's settings (a benchmark sets the ones it measures itself)."""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack

# Run a command so that it gets SIGTERM when this process dies (even by SIGKILL): no server
# outlives the benchmark. argv: parent pid, command...
PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def free_port() -> int:
    """A free loopback port (free when asked: the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held until every one is chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def env_without(*prefixes: str, **extra: str) -> dict[str, str]:
    """This process's environment minus the variables starting with ``prefixes``, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | extra
