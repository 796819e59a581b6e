"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright) against a real
stack: mosquitto, the ingest role, the API with the dashboard, two simulated devices; once on an
SQLite file and once on a real PostgreSQL (tests/pgserver.py), like the cloud tests."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from edge_agent.sync import protocol
from tests.cloud import start_ingest
from tests.conftest import make_cloud_db
from tests.dashboard import PASSWORD, USER, Device, api_role, devices
from tests.sync.broker import Broker, run_broker

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


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """Fail (not skip) without Debian's chromium: `make test` installs it."""
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make test` (apt-get install chromium)"


TIMEOUT_MS = 15_000


class Stack:
    def __init__(self, broker: Broker, base: str, devs: list[Device], shots: Path) -> None:
        self.broker, self.base, self.devices, self.shots = broker, base, devs, shots


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp(f"dashboard-browser-{db_backend}")
    db = make_cloud_db(request, db_backend, work)
    shots = work / "screenshots"
    shots.mkdir()
    with run_broker(work / "broker") as broker:
        ingest = start_ingest(broker, db, work, "ingest-browser")
        try:
            with api_role(broker, db, work) as base, devices(broker, "kitchen-pi", "garage-pi") as devs:
                yield Stack(broker, base, devs, shots)
        finally:
            ingest.stop()


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{stack.base}/dashboard/")
            assert page.url.endswith("/dashboard/login")  # redirected: no session yet
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{stack.base}/dashboard/")
            yield page
        finally:
            browser.close()


def row(page: Page, device: str) -> Locator:
    return page.locator(f'#fleet tr[data-device="{device}"]')


def test_fleet_shows_both_devices_online(stack: Stack, page: Page) -> None:
    for name in ("kitchen-pi", "garage-pi"):
        expect(row(page, name).locator("td.state")).to_have_text("online")
    expect(row(page, "kitchen-pi")).to_contain_text("iris 1")
    expect(page.locator("#count")).to_have_text("2 of 2 online")
    page.screenshot(path=stack.shots / "fleet.png")


def test_filter_and_sort(page: Page) -> None:
    page.fill("#filter", "garage")
    expect(page.locator("#fleet tbody tr")).to_have_count(1)
    page.fill("#filter", "")
    page.click('th[data-sort="id"]')  # already by id: now descending
    expect(page.locator("#fleet tbody tr").first).to_have_attribute("data-device", "kitchen-pi")


def test_a_new_result_appears_without_reload(stack: Stack, page: Page) -> None:
    before = int(row(page, "garage-pi").locator("td.results").inner_text())
    stack.devices[1].result("cat")
    expect(row(page, "garage-pi").locator("td.results")).to_have_text(str(before + 1))


def test_device_page_command_reply_and_live_results(stack: Stack, page: Page) -> None:
    page.click('a[href="/dashboard/devices/kitchen-pi"]')
    expect(page.locator("#device-state")).to_have_text("online")
    expect(page.locator("#results-empty")).to_be_visible()
    result_id = stack.devices[0].result("dog")
    expect(page.locator(f'#results tr[data-result="{result_id}"]')).to_contain_text("dog")
    page.click('button[data-command="ping"]')
    expect(page.locator("#command-out pre.reply")).to_contain_text('"pong": true')
    page.click('button[data-command="run_batch"]')
    expect(page.locator("#command-out pre.reply")).to_contain_text('"ran": "run_batch"')
    expect(page.locator("#plots svg.plot")).to_have_count(2)
    page.screenshot(path=stack.shots / "device.png")


def test_results_and_models_pages_render(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.base}/dashboard/results")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    page.fill("input[name=device]", "garage-pi")
    page.click("#query button[type=submit]")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    expect(page.locator("#csv")).to_have_attribute("href", "/dashboard/results.csv?device=garage-pi")
    page.screenshot(path=stack.shots / "results.png")
    page.goto(f"{stack.base}/dashboard/models")
    expect(page.locator("#models")).to_contain_text("No model published yet")
    expect(page.locator("#deployments")).to_contain_text("No deployment yet")
    page.screenshot(path=stack.shots / "models.png")


def test_drifted_inputs_are_marked_and_plotted(stack: Stack, page: Page) -> None:
    """Telemetry as the sync role sends it (drift_psi.<model>, drift_flag.<model>): the fleet page marks the
    pair past the threshold, not the other; the device page plots the PSI history."""
    for psi, flag in ((0.4, 1.0), (0.9, 1.0)):
        metrics = {"outbox_depth": 0.0, "rss_bytes": 9e7, "drift_psi.iris": psi, "drift_flag.iris": flag}
        stack.devices[0].publish(
            protocol.Telemetry(device="kitchen-pi", ts=time.time(), metrics=metrics), "telemetry"
        )
        time.sleep(0.05)
    calm = {"outbox_depth": 0.0, "rss_bytes": 9e7, "drift_psi.iris": 0.03, "drift_flag.iris": 0.0}
    stack.devices[1].publish(
        protocol.Telemetry(device="garage-pi", ts=time.time(), metrics=calm), "telemetry"
    )
    page.goto(f"{stack.base}/dashboard/")
    expect(row(page, "kitchen-pi").locator('td.drift span[data-model="iris"]')).to_have_text("iris 0.90")
    expect(row(page, "kitchen-pi").locator("td.drift span.drifted")).to_have_count(1)
    expect(row(page, "garage-pi").locator('td.drift span[data-model="iris"]')).to_have_text("iris 0.03")
    expect(row(page, "garage-pi").locator("td.drift span.drifted")).to_have_count(0)
    page.screenshot(path=stack.shots / "fleet-drift.png")
    page.click('a[href="/dashboard/devices/kitchen-pi"]')
    expect(page.locator("#plots svg.plot")).to_have_count(3)
    expect(page.locator("#plots")).to_contain_text("Input drift of iris")


def test_a_stopped_device_turns_offline(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.base}/dashboard/")
    expect(row(page, "garage-pi").locator("td.state")).to_have_text("online")
    stack.devices[1].kill_socket()  # dies without DISCONNECT: the broker publishes its Last Will
    expect(row(page, "garage-pi").locator("td.state")).to_have_text("offline")
    expect(row(page, "kitchen-pi").locator("td.state")).to_have_text("online")
    expect(page.locator("#count")).to_have_text("1 of 2 online")
    page.screenshot(path=stack.shots / "fleet-offline.png")
    print(f"screenshots in {stack.shots}")
