"""A rollout driven from the dashboard in headless Chromium against the real fleet of demo/fleet.py:
mosquitto, the cloud (ingest + API with the dashboard login) and two `edge-agent up` devices.

iris 2 is deployed through the deploy form and reaches "active" on every device; iris 3, whose
stored artifact was tampered with after publishing, is refused by every device (sha256 check) and
each gateway keeps answering with iris 2."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from demo.fleet import DEVICES, MOSQUITTO, ROOT, Fleet
from tests.dashboard import PASSWORD, PASSWORD_HASH, USER, logged_in
from tests.dashboard.test_dashboard_browser import ARGS, CHROMIUM


@pytest.fixture(autouse=True)
def _system_packages() -> None:
    """Fail (not skip) without the Debian packages: `make test` installs them."""
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make test` (apt-get install chromium)"
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make test` (apt-get install mosquitto)"


TIMEOUT_MS = 60_000


def stage(fleet: Fleet, version: str) -> Path:
    """A copy of models/iris/1 with ``version`` in its manifest."""
    staged = fleet.work / "staging" / "iris" / version
    shutil.copytree(ROOT / "models" / "iris" / "1", staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["version"] = version
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return staged


def publish(fleet: Fleet, version: str) -> dict[str, str]:
    return dict(json.loads(fleet.cloud("models", "publish", str(stage(fleet, version)))))


def tamper(fleet: Fleet, sha256: str) -> Path:
    """Flip one byte in the middle of the stored archive (artifacts/ beside the cloud database)."""
    artifacts = Path(fleet.cloud_env["CLOUD_DB_PATH"]).parent / "artifacts"
    (path,) = artifacts.glob(f"{sha256}*")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def iris_version(port: int) -> str:
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/models/iris/predict",
        json={"data": [[5.1, 3.5, 1.4, 0.2]]},
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["version"])


def wait_version(port: int, want: str, timeout: float = 60.0) -> str:
    deadline, got = time.monotonic() + timeout, "?"
    while time.monotonic() < deadline:
        try:
            got = iris_version(port)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            got = repr(exc)
        if got == want:
            return got
        time.sleep(0.3)
    raise AssertionError(f"gateway :{port} answers iris version {got}, expected {want}")


def deploy_through_form(page: Page, version: str) -> str:
    """Fill and submit the deploy form (iris ``version``, all devices); returns the deployment id."""
    form = page.locator("form#deploy")
    form.locator("select[name=model]").select_option("iris")
    form.locator("select[name=version]").select_option(version)
    expect(form.locator("input[name=all]")).to_be_checked()
    form.locator("button[type=submit]").click()
    out = page.locator("#deploy-out")
    expect(out).to_have_text(re.compile(r"Deployment [0-9a-f]+ sent"), timeout=TIMEOUT_MS)
    match = re.search(r"Deployment ([0-9a-f]+) sent", out.inner_text())
    assert match, out.inner_text()
    return match.group(1)


def rollout_row(page: Page, deployment: str, device: str) -> Locator:
    return page.locator(f'#deployments section[data-deployment="{deployment}"] tr[data-device="{device}"]')


def test_rollout_from_the_dashboard(tmp_path: Path) -> None:
    t0 = time.monotonic()
    work = tmp_path / "fleet"
    (work / "logs").mkdir(parents=True)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    fleet = Fleet(work)
    fleet.cloud_env |= {
        "CLOUD_DASHBOARD_USER": USER,
        "CLOUD_DASHBOARD_PASSWORD_HASH": PASSWORD_HASH,
        "CLOUD_SESSION_SECRET": "rollout-test-session-secret",
    }
    client: httpx.Client | None = None
    try:
        fleet.start_broker()
        fleet.start_cloud()
        client = logged_in(fleet.api)
        fleet.cloud_http = client  # with a dashboard login configured, the API wants a session
        fleet.start_devices()
        for port in fleet.gateway_ports.values():
            assert iris_version(port) == "1"
        publish(fleet, "2")
        v3 = publish(fleet, "3")
        tamper(fleet, v3["sha256"])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"{fleet.api}/dashboard/")
                assert page.url.endswith("/dashboard/login")
                page.fill("input[name=user]", USER)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{fleet.api}/dashboard/")

                page.goto(f"{fleet.api}/dashboard/models")
                expect(page.locator("#models")).to_contain_text("iris", timeout=TIMEOUT_MS)
                expect(page.locator("select[name=version] option")).to_have_count(2, timeout=TIMEOUT_MS)

                # iris 2: every device reaches "active"
                dep2 = deploy_through_form(page, "2")
                for dev in DEVICES:
                    expect(rollout_row(page, dep2, dev).locator("td.state")).to_have_text(
                        "active", timeout=TIMEOUT_MS
                    )
                page.screenshot(path=shots / "rollout-iris-2.png", full_page=True)
                for port in fleet.gateway_ports.values():
                    wait_version(port, "2")

                # iris 3, tampered: every device refuses it on the sha256 check, keeps iris 2
                dep3 = deploy_through_form(page, "3")
                for dev in DEVICES:
                    row = rollout_row(page, dep3, dev)
                    expect(row.locator("td.state")).to_have_text("failed", timeout=TIMEOUT_MS)
                    expect(row.locator("td.reason")).to_contain_text("sha256")
                    expect(row.locator("td.reason")).to_contain_text("tampered")
                page.screenshot(path=shots / "rollout-iris-3-refused.png", full_page=True)
                for dev in DEVICES:  # the earlier rollout is still shown as active
                    expect(rollout_row(page, dep2, dev).locator("td.state")).to_have_text("active")
                for port in fleet.gateway_ports.values():
                    assert iris_version(port) == "2"
            finally:
                browser.close()
    finally:
        fleet.stop_all()
        if client is not None:
            client.close()
        print(f"rollout test: {time.monotonic() - t0:.1f} s; screenshots in {shots}; logs in {work / 'logs'}")
