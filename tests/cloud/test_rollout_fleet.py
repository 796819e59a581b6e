"""Staged rollouts on a real fleet: mosquitto, the cloud (ingest + API, whose driver runs the
rollouts) and four `edge-agent up` devices (gateway + sync) serving iris, with live traffic on
every gateway so the staged version gets shadow samples.

- iris 2 (the same model) goes out wave by wave (1 device, then 1, then 2) and every gateway ends
  up answering with it; each wave starts only after the previous one is active everywhere;
- iris 3 passes its golden self-test (same tensors) but has two labels swapped: wave 1 halts on
  shadow agreement, is rolled back to iris 2, and the other devices never receive iris 3;
- the same in the dashboard (headless Chromium): both rollouts, their waves, per-device states and
  the agreement that decided; then a rollout paused, resumed and aborted from its buttons.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from demo.fleet import MOSQUITTO, Fleet
from tests.dashboard import PASSWORD, PASSWORD_HASH, USER, logged_in
from tests.dashboard.test_dashboard_browser import ARGS, CHROMIUM
from tests.dashboard.test_dashboard_rollout import publish, stage, wait_version

DEVICES = ("fl-1", "fl-2", "fl-3", "fl-4")
SHADOW_ENV = {"EDGE_SHADOW__SAMPLE": "1.0", "EDGE_SHADOW__MAX_PER_S": "50", "EDGE_SHADOW__QUEUE": "16"}
THRESHOLDS = {"min_agreement": 0.95, "min_samples": 10, "max_latency_ratio": 20.0, "wave_timeout_s": 240}
ROWS = [[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0], [6.1, 2.9, 4.7, 1.4]]


def publish_swapped(fleet: Fleet, version: str) -> None:
    """iris ``version``: iris 1 with two labels swapped (the golden sample still passes)."""
    staged = stage(fleet, version)
    manifest = json.loads((staged / "manifest.json").read_text())
    labels = manifest["labels"]
    labels[1], labels[2] = labels[2], labels[1]
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    fleet.cloud("models", "publish", str(staged))


class Traffic:
    """Live requests on every gateway (no prediction cache), until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.ports = list(fleet.gateway_ports.values())
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10, headers={"Cache-Control": "no-cache"}) as client:
            i = 0
            while not self._stop.is_set():
                for port in self.ports:
                    try:
                        client.post(
                            f"http://127.0.0.1:{port}/v1/models/iris/predict",
                            json={"data": [ROWS[i % len(ROWS)]]},
                        )
                        self.sent += 1
                    except httpx.HTTPError:
                        pass
                i += 1
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make test` (apt-get install mosquitto)"
    work = tmp_path_factory.mktemp("rollout-fleet")
    (work / "logs").mkdir()
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make test` (apt-get install chromium)"
    fleet = Fleet(work, devices=DEVICES, roles=("serve", "sync"), models=("iris",), device_env=SHADOW_ENV)
    fleet.cloud_env |= {
        "CLOUD_DASHBOARD_USER": USER,
        "CLOUD_DASHBOARD_PASSWORD_HASH": PASSWORD_HASH,
        "CLOUD_SESSION_SECRET": "rollout-fleet-session-secret",
    }
    traffic: Traffic | None = None
    try:
        fleet.start_broker()
        fleet.start_cloud()
        fleet.cloud_http = logged_in(fleet.api)  # with a dashboard login configured, the API wants a session
        fleet.start_devices()
        publish(fleet, "2")
        publish_swapped(fleet, "3")
        traffic = Traffic(fleet)
        yield fleet
    finally:
        if traffic is not None:
            traffic.stop()
        fleet.stop_all()


def start(fleet: Fleet, version: str) -> str:
    r = fleet.cloud_http.post(
        f"{fleet.api}/rollouts",
        json={
            "model": "iris",
            "version": version,
            "devices": list(DEVICES),
            "thresholds": THRESHOLDS,
            "artifact_base_url": fleet.api,
        },
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert [w["devices"] for w in doc["waves"]] == [["fl-1"], ["fl-2"], ["fl-3", "fl-4"]]
    return str(doc["id"])


def finished(fleet: Fleet, rollout: str, timeout: float = 400.0) -> dict[str, Any]:
    deadline, doc = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        doc = fleet.cloud_http.get(f"{fleet.api}/rollouts/{rollout}").json()
        if doc["state"] not in ("running", "paused"):
            return dict(doc)
        time.sleep(0.5)
    raise AssertionError(
        f"rollout {rollout} still {doc.get('state')}: {json.dumps(doc.get('events'), indent=1)}"
    )


def test_a_good_version_goes_out_wave_by_wave(fleet: Fleet) -> None:
    rollout = start(fleet, "2")
    doc = finished(fleet, rollout)
    assert doc["state"] == "done", doc["events"]
    assert [w["state"] for w in doc["waves"]] == ["done", "done", "done"]
    for wave in doc["waves"]:
        assert wave["decision"] == "shadow figures within thresholds on every device"
        for device in wave["devices"]:
            figures = wave["figures"][device]
            assert figures["candidate"] == "2" and figures["samples"] >= THRESHOLDS["min_samples"]
            assert figures["agreement"] == 1.0
            assert wave["device_states"][device]["state"] == "active"
    # each wave staged only after the previous one was active everywhere
    events = [e["what"] for e in doc["events"]]
    for n in (2, 3):
        assert events.index(
            f"wave {n}: staging on {', '.join(doc['waves'][n - 1]['devices'])}"
        ) > events.index(f"wave {n - 1}: active on every device")
    for port in fleet.gateway_ports.values():
        wait_version(port, "2")


def test_a_bad_version_halts_in_wave_one_and_rolls_back(fleet: Fleet) -> None:
    rollout = start(fleet, "3")
    doc = finished(fleet, rollout)
    assert doc["state"] == "halted", doc["events"]
    assert "shadow agreement" in doc["reason"] and doc["reason"].startswith("wave 1 halted and rolled back")
    first, *rest = doc["waves"]
    assert first["state"] == "rolled_back" and first["figures"]["fl-1"]["agreement"] < 0.95
    assert [w["state"] for w in rest] == ["pending", "pending"]
    # fl-1 serves iris 2 again, its staged candidate withdrawn; the others never received iris 3
    assert wait_version(fleet.gateway_ports["fl-1"], "2") == "2"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shadow = fleet.cloud_http.get(f"{fleet.api}/devices/fl-1").json().get("shadow") or {}
        if "iris" not in shadow:
            break
        time.sleep(0.5)
    assert "iris" not in shadow, shadow
    for device in DEVICES[1:]:
        assert wait_version(fleet.gateway_ports[device], "2") == "2"
        last = fleet.cloud_http.get(f"{fleet.api}/devices/{device}").json()["last_update"]
        assert last["version"] == "2", last  # iris 3 was never sent to it
        assert not (fleet.work / device / "models" / "iris" / "3").exists()


def test_the_dashboard_shows_waves_figures_and_drives_a_rollout(fleet: Fleet, tmp_path: Path) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{fleet.api}/dashboard/login")
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{fleet.api}/dashboard/")
            page.goto(f"{fleet.api}/dashboard/rollouts")
            cards = page.locator("section.rollout")
            expect(cards).to_have_count(2)
            bad, good = cards.nth(0), cards.nth(1)  # newest first
            expect(good.locator(".rollout-state")).to_have_text("done")
            expect(good.locator("section.wave .wave-state")).to_have_text(["done", "done", "done"])
            expect(good.locator('tr[data-device="fl-3"] td.agreement')).to_have_text("100.0 %")
            expect(bad.locator(".rollout-state")).to_have_text("halted")
            expect(bad.locator("p.reason").first).to_contain_text("shadow agreement")
            expect(bad.locator("section.wave .wave-state")).to_have_text(
                ["rolled back", "pending", "pending"]
            )
            agreement = bad.locator('section[data-wave="1"] tr[data-device="fl-1"] td.agreement')
            expect(agreement).to_have_class("agreement failed")
            assert float(agreement.inner_text().split()[0]) < 95.0
            page.screenshot(path=tmp_path / "rollouts-halted.png", full_page=True)

            # a third rollout from the form: paused, resumed, aborted with the buttons
            form = page.locator("form#start")
            form.locator("select[name=model]").select_option("iris")
            form.locator("select[name=version]").select_option("3")
            form.locator("input[name=min_samples]").fill("100000")  # never enough: it waits in wave 1
            form.locator("button[type=submit]").click()
            expect(page.locator("#start-out")).to_contain_text("started")
            third = cards.nth(0)
            expect(third.locator(".rollout-state")).to_have_text("running")
            third.locator("button.pause").click()
            expect(third.locator(".rollout-state")).to_have_text("paused")
            third.locator("button.resume").click()
            expect(third.locator(".rollout-state")).to_have_text("running")
            expect(third.locator('section[data-wave="1"] .wave-state')).to_have_text("evaluating")
            third.locator("button.abort").click()
            expect(third.locator(".rollout-state")).to_have_text("aborted")
            expect(third.locator('section[data-wave="1"] .wave-state')).to_have_text("rolled back")
            page.screenshot(path=tmp_path / "rollouts-aborted.png", full_page=True)
        finally:
            browser.close()
    assert wait_version(fleet.gateway_ports["fl-1"], "2") == "2"
