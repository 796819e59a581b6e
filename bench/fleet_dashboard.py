"""The fleet page in headless Chromium during a bench/fleet.py run: load time and live-update bytes.

Debian's Chromium driven by Playwright, logged in to the dashboard of the API role that
bench/fleet.py started. It measures

* **page load**: a fresh navigation to the fleet page until the page holds every device and has
  drawn its first rows (the median of ``loads`` loads, the first one reported too);
* **live-update bytes/s**: server-sent event data the page received over ``seconds``, beside what
  the same number of events would have carried had each held the whole fleet (the size of the
  ``fleet`` event the page got on connecting).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from bench.dashboard import dashboard_page


@dataclass(frozen=True)
class PageFigures:
    load_ms: float  # median of the fresh loads
    first_load_ms: float
    events: int
    bytes_s: float  # event data the page received per second
    whole_fleet_bytes: int  # one event carrying every device
    whole_fleet_bytes_s: float  # had every event carried the whole fleet

    @property
    def less(self) -> float:
        return self.whole_fleet_bytes_s / self.bytes_s if self.bytes_s else float("inf")


def measure_page(
    base: str, user: str, password: str, devices: int, seconds: float, loads: int = 3
) -> PageFigures:
    """Log in, load the fleet page ``loads`` times, then count the live feed's bytes for ``seconds``."""
    rows_shown = f"() => fleet.devices.length >= {devices} && document.querySelector('#fleet tbody tr')"
    with dashboard_page(base, user, password, timeout_ms=120_000) as page:
        page.wait_for_function(rows_shown)
        times = []
        for _ in range(loads):
            started = time.monotonic()
            page.goto(f"{base}/dashboard/")
            page.wait_for_function(rows_shown)
            times.append((time.monotonic() - started) * 1000)
        time.sleep(1)
        events0, bytes0 = page.evaluate("window.__fleetEvents"), page.evaluate("window.__fleetBytes")
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        events = page.evaluate("window.__fleetEvents") - events0
        data = page.evaluate("window.__fleetBytes") - bytes0
        whole = int(page.evaluate("window.__fullBytes"))
    return PageFigures(
        load_ms=statistics.median(times),
        first_load_ms=times[0],
        events=events,
        bytes_s=data / elapsed,
        whole_fleet_bytes=whole,
        whole_fleet_bytes_s=whole * events / elapsed,
    )
