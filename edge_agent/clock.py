"""Can the wall clock be trusted? A Raspberry Pi has no real-time clock: it boots with the time
it had at the last shutdown (fake-hwclock) or 1970, until NTP answers.

``clock_trust()`` is the one answer every part of the agent uses:

1. a wall time earlier than ``BUILD_EPOCH`` (this agent was built after it) is wrong: untrusted;
2. systemd-timesyncd runs (``/run/systemd/timesync`` exists) but has not yet synchronised
   (no ``synchronized`` file in it): untrusted, "waiting for NTP";
3. otherwise trusted (synchronised, or nothing on the device can tell: the operator set it).

Nothing refuses to run on an untrusted clock. Results recorded meanwhile are marked
``clock: "unsynced"`` with the boot-relative monotonic time, and their time is corrected once
the clock is trusted (same boot) by ``correct_unsynced``; retention prunes nothing meanwhile.

Signed metadata with an expiry (model updates) follows one rule, documented in
docs/model-updates.md ("The clock") and kept in ``edge_agent/sync/trust.py``: expiry is never
switched off; the device keeps a time floor (the agent's build time, raised to the issue time of
every verified document), and a clock below it (less 5 minutes) skips the update
(``clock_untrusted``) until the clock is set; the same desired state is retried when delivered
again. An unsynced clock reading before ``BUILD_EPOCH`` is always below that floor. A device that
booted in 1970 would otherwise take every expired document as valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# 2026-12-01T00:00:00Z: no correct clock reads earlier than the day this agent version was built.
BUILD_EPOCH = 1_764_547_200.0
TIMESYNC_DIR = Path("/run/systemd/timesync")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UPTIME = Path("/proc/uptime")

ClockState = Literal["synced", "unsynced"]


@dataclass(frozen=True, slots=True)
class ClockTrust:
    trusted: bool
    reason: str
    wall: float  # time.time() when asked
    boot_s: float  # boot_seconds() when asked

    @property
    def state(self) -> ClockState:
        return "synced" if self.trusted else "unsynced"


def boot_seconds() -> float:
    """Seconds since boot, suspend included, from ``/proc/uptime`` (10 ms resolution): the one
    clock no NTP step and no faked wall clock moves."""
    try:
        return float(UPTIME.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def clock_trust(timesync_dir: Path | None = None) -> ClockTrust:
    """Whether wall-clock times may be believed now, and why (see the module's rules)."""
    wall, boot = time.time(), boot_seconds()
    if wall < BUILD_EPOCH:
        day = time.strftime("%Y-%m-%d", time.gmtime(wall))
        reason = f"the clock reads {day}, before this agent was built"
        return ClockTrust(False, reason, wall, boot)
    sync_dir = TIMESYNC_DIR if timesync_dir is None else timesync_dir
    if sync_dir.is_dir() and not (sync_dir / "synchronized").exists():
        return ClockTrust(False, "systemd-timesyncd has not synchronised the clock yet", wall, boot)
    return ClockTrust(
        True, "synchronised" if sync_dir.is_dir() else "no way to tell: assumed set", wall, boot
    )


_cache: dict[str, tuple[float, ClockTrust]] = {}


def clock_trust_cached(max_age_s: float = 1.0) -> ClockTrust:
    """``clock_trust()``, re-evaluated at most every ``max_age_s`` (for per-result use)."""
    now, last = time.monotonic(), _cache.get("last")
    if last is None or not 0 <= now - last[0] <= max_age_s:
        last = _cache["last"] = (now, clock_trust())
    return last[1]
