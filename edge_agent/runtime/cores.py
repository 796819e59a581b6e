"""How many CPU cores this process may really use: its affinity mask, capped by a cgroup v2 quota.

The serving layer hands slow runtime calls to a thread so the event loop keeps reading requests
meanwhile. That only pays when the thread gets a core of its own: a process pinned to one core
(``taskset -c 0``, a systemd ``CPUAffinity=``) or held to one core's worth of time (Docker
``--cpus=1``, a cgroup ``cpu.max`` quota) would run both on the same core, and the hop then only
adds thread switches, each one evicting the caches the other thread had warmed.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cores(text: str) -> int | None:
    """Cores a cgroup v2 ``cpu.max`` line (``"<quota> <period>"`` or ``"max <period>"``) allows,
    rounded up (1.5 cores of time let two threads run at once part of the time); None when
    unlimited or unreadable."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def count(affinity: int, cpu_max: str | None) -> int:
    """Usable cores from the affinity mask's size and the cgroup's ``cpu.max`` text (if any)."""
    quota = quota_cores(cpu_max) if cpu_max is not None else None
    return max(1, min(affinity, quota) if quota is not None else affinity)


@cache
def usable_cores() -> int:
    """This process's usable cores, read once (a pinned process stays pinned)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    try:
        cpu_max: str | None = CPU_MAX.read_text()
    except OSError:
        cpu_max = None
    return count(affinity, cpu_max)
