"""The machine a benchmark ran on, for the header lines of its output."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path


def dist(name: str) -> str:
    """The installed version of distribution ``name``, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (x86 "model name", Arm "Model"), else the machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def command_line(argv: Sequence[str]) -> str:
    """The header's first line: the command that produced the output."""
    return f"command: {shlex.join([sys.executable, *argv])}"


def cpus_line(suffix: str = "") -> str:
    """``CPUs: N (M usable), model, arch`` and an optional ``; ...`` about threads."""
    line = f"CPUs: {os.cpu_count()} ({usable_cpus()} usable), {cpu_model()}, {platform.machine()}"
    return f"{line}; {suffix}" if suffix else line
