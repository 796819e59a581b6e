"""Dashboard benchmark: the fleet page under a steady telemetry load, everything on this machine.

A real mosquitto on a free loopback port, the real cloud ingest role and the real API (with a
dashboard login) as subprocesses, N simulated devices on paho in this process (each with a retained
online Status and a Last Will, then one Telemetry message a second), and the fleet page open in
headless Chromium (Debian's, driven by Playwright), logged in. For ``--seconds`` it measures:

* **API CPU % / ingest CPU %**: utime+stime from ``/proc/<pid>/stat`` over the window, as % of one core.
* **page load and live-update bytes**: a fresh load of the fleet page (navigation to rows drawn),
  and the bytes of server-sent event data per second, beside what the same events would have
  carried had each held the whole fleet (the feed before it sent only changed devices).
* **page updates**: ``fleet`` server-sent events received by the page (counted by a wrapper around
  ``EventSource`` injected before the page's scripts run), and how often the "last seen" cell of one
  device changed when read every ``--sample`` seconds; plus the page's worst staleness (now minus
  the newest ``last_seen`` the page holds) at those reads.

    .venv/bin/python bench/dashboard.py                 # about 1 minute
    .venv/bin/python bench/dashboard.py --devices 100 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from edge_agent.sync import protocol  # noqa: E402
from tests.cloud import SimDevice, start_ingest, status_msg  # noqa: E402
from tests.dashboard import PASSWORD, USER, api_role  # noqa: E402
from tests.sync.broker import run_broker  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Counts the page's `fleet` events without touching its code: wraps EventSource before any script runs.
COUNT_EVENTS = """
window.__fleetEvents = 0;
window.__fleetBytes = 0;
window.__fullBytes = 0;
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(...args) {
    super(...args);
    this.addEventListener("fleet", (e) => {
      window.__fleetEvents += 1; window.__fleetBytes += e.data.length; window.__fullBytes = e.data.length;
    });
    this.addEventListener("fleet-delta", (e) => {
      window.__fleetEvents += 1; window.__fleetBytes += e.data.length;
    });
  }
};
"""


@contextlib.contextmanager
def dashboard_page(base: str, user: str, password: str, timeout_ms: int) -> Iterator[Page]:
    """The dashboard in headless Chromium (Debian's, driven by Playwright), logged in, on the fleet
    page, counting the live feed's events and bytes (``COUNT_EVENTS``); the browser closed after."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            context.add_init_script(COUNT_EVENTS)
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            page.goto(f"{base}/dashboard/login")
            page.fill("input[name=user]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/dashboard/")
            yield page
        finally:
            browser.close()


# The newest last_seen the page holds (fleet.js keeps the last snapshot in a top-level `fleet`).
NEWEST_SEEN = "() => Math.max(0, ...fleet.devices.map((d) => d.last_seen || 0))"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


class Telemetry(threading.Thread):
    """One Telemetry message per device every ``every_s`` (a slice of the fleet each second), QoS 1,
    published without waiting for the PUBACK."""

    def __init__(self, devices: list[SimDevice], every_s: int = 1) -> None:
        super().__init__(daemon=True)
        self.devices = devices
        self.every_s = max(1, every_s)
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        tick = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            tick += 1
            for dev in self.devices[tick % self.every_s :: self.every_s]:
                depth = float(tick % 7)
                metrics = {"outbox_depth": depth, "rss_bytes": 80e6 + depth * 1e6}
                msg = protocol.Telemetry(device=dev.device, ts=time.time(), metrics=metrics)
                dev.client.publish(protocol.topic(dev.device, "telemetry"), protocol.encode(msg), qos=1)
                self.sent += 1
            next_at += 1.0
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def telemetry_rows(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])
    finally:
        conn.close()


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    db = work / "cloud.sqlite3"
    devices: list[SimDevice] = []
    sender: Telemetry | None = None
    with run_broker(work / "broker") as broker:
        ingest = start_ingest(broker, db, work, "ingest-bench")
        try:
            with api_role(broker, db, work) as base:
                for i in range(args.devices):
                    dev = SimDevice(broker, f"dev-{i:03d}", will=True)
                    devices.append(dev)
                    dev.publish(status_msg(dev.device), "status", retain=True)
                sender = Telemetry(devices, args.telemetry_s)
                sender.start()
                api_pid = _api_pid(ingest.proc.pid)
                _measure(args, base, db, ingest.proc.pid, api_pid, sender)
        finally:
            if sender is not None:
                sender.stop.set()
                sender.join(5)
            for dev in devices:
                dev.close()
            ingest.stop()
            shutil.rmtree(work, ignore_errors=True)


def _api_pid(ingest_pid: int) -> int:
    """The API child of this process: the one running ``cloud_sync.cli api`` (not the ingest)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == ingest_pid:
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"cloud_sync.cli" in cmd and b"api" in cmd:
            return int(entry.name)
    raise RuntimeError("cannot find the API process")


def _measure(
    args: argparse.Namespace, base: str, db: Path, ingest_pid: int, api_pid: int, sender: Telemetry
) -> None:
    device = "dev-000"
    with dashboard_page(base, USER, PASSWORD, timeout_ms=15_000) as page:
        rows_shown = f"() => fleet.devices.length >= {args.devices}"  # the page draws 100 rows at a time
        page.wait_for_function(rows_shown)
        started = time.monotonic()  # a fresh load of the fleet page, logged in
        page.goto(f"{base}/dashboard/")
        page.wait_for_function(rows_shown)
        page.wait_for_selector("#fleet tbody tr")
        load_s = time.monotonic() - started
        cell = page.locator(f'#fleet tr[data-device="{device}"] td:nth-child(3)')
        time.sleep(2)  # let the load settle: every device online and sending

        rows0, sent0, events0 = telemetry_rows(db), sender.sent, page.evaluate("window.__fleetEvents")
        bytes0 = page.evaluate("window.__fleetBytes")
        api0, ingest0, t0 = cpu_seconds(api_pid), cpu_seconds(ingest_pid), time.monotonic()
        last_title = cell.get_attribute("title")
        reads = changes = 0
        worst_stale = 0.0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(args.sample)
            title = cell.get_attribute("title")
            reads += 1
            changes += title != last_title
            last_title = title
            worst_stale = max(worst_stale, time.time() - page.evaluate(NEWEST_SEEN))
        elapsed = time.monotonic() - t0
        api1, ingest1 = cpu_seconds(api_pid), cpu_seconds(ingest_pid)
        events = page.evaluate("window.__fleetEvents") - events0
        sse_bytes = page.evaluate("window.__fleetBytes") - bytes0
        full_bytes = page.evaluate("window.__fullBytes")
        sent, rows = sender.sent - sent0, telemetry_rows(db) - rows0
        online = page.locator("#count").inner_text()

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    print(f"`{shlex.join([python, *sys.argv])}` - {elapsed:.1f} s window, load average {load}")
    print()
    print(
        "| devices | telemetry msgs/s sent | stored/s | API CPU % | ingest CPU % "
        "| page fleet events | last-seen cell changed | worst page staleness |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.devices} | {sent / elapsed:.1f} | {rows / elapsed:.1f} "
        f"| {100 * (api1 - api0) / elapsed:.1f} | {100 * (ingest1 - ingest0) / elapsed:.1f} "
        f"| {events} ({events / elapsed:.2f}/s) | {changes} of {reads} reads | {worst_stale:.1f} s |"
    )
    print()
    print(
        f"fleet page load (navigation to rows drawn): {load_s * 1000:.0f} ms; live-update data "
        f"{sse_bytes / elapsed:,.0f} bytes/s (only changed devices) vs {full_bytes * events / elapsed:,.0f} "
        f"bytes/s had every event carried the whole fleet ({full_bytes:,} bytes): "
        f"{full_bytes * events / max(1, sse_bytes):.1f}x less"
    )
    print(f"page: {online}; CPU is of one core, from /proc/<pid>/stat utime+stime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--telemetry-s", type=int, default=1, help="seconds between a device's telemetry messages (default 1)"
    )
    parser.add_argument("--sample", type=float, default=3.0, help="seconds between reads of the page")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
