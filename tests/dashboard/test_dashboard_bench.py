"""On-device benchmark figures from the device to the operator, all real: `edge-agent models bench`
(a process, the bundled models) saves them, the device's sync role (a process) reports them on
models/reported through mosquitto, the cloud's ingest role stores them, the API serves them, the
dashboard's models page shows them in headless Chromium, and edge-console prints them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from edge_agent.sync.protocol import ModelBench
from tests.cloud import ROOT, query, running, start_ingest, wait_for
from tests.cloud.test_console import console
from tests.conftest import MODELS
from tests.dashboard import PASSWORD, USER, api_role
from tests.dashboard.test_dashboard_browser import ARGS, CHROMIUM
from tests.sync.broker import Broker, run_broker

DEVICE = "bench-pi"
TOKEN = "bench-test-token"
TIMEOUT_MS = 30_000


def js_fixed(x: float, digits: int = 3) -> str:
    """``x.toFixed(digits)`` as the page's JavaScript writes it: the exact binary value rounded,
    a tie going up (0.0625 -> "0.063"; Python's format gives "0.062")."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """Fail (not skip) without Debian's chromium: `make test` installs it."""
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make test` (apt-get install chromium)"


def bench(data_dir: Path, model: str) -> ModelBench:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(MODELS), "--data-dir", str(data_dir),
         "models", "bench", model, "--batch", "1,4", "--threads", "1", "--seconds", "0.05", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return ModelBench.model_validate_json(out.stdout)


@pytest.fixture
def sync_role(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_sync(broker: Broker, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env |= {"PYTHONPATH": str(ROOT), "EDGE_SYNC__RECONNECT_MIN_S": "1", "EDGE_SYNC__POLL_INTERVAL_S": "0.05"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent.sync.agent", "--data-dir", str(data_dir), "--model-dir",
             str(MODELS), "--device-id", DEVICE, "--broker-host", broker.host, "--broker-port", str(broker.port)],
            env=env, stdout=out, stderr=out, cwd=ROOT,
        )  # fmt: skip


def stored(db: Path, model: str) -> dict[str, object] | None:
    rows = query(db, "SELECT figures FROM model_bench WHERE device = ? AND model = ?", DEVICE, model)
    return json.loads(rows[0][0]) if rows else None


def test_bench_figures_reach_the_cloud_the_dashboard_and_the_console(
    tmp_path: Path, sync_role: list[subprocess.Popen[bytes]]
) -> None:
    data_dir, db, shots = tmp_path / "device", tmp_path / "cloud.sqlite3", tmp_path / "screenshots"
    shots.mkdir()
    iris = bench(data_dir, "iris")
    with (
        run_broker(tmp_path / "broker") as broker,
        running(start_ingest(broker, db, tmp_path, "ingest-bench")),
        api_role(broker, db, tmp_path, api_token=TOKEN) as base,
    ):
        sync_role.append(start_sync(broker, data_dir, tmp_path / "sync.log"))
        wait_for(lambda: stored(db, "iris"), 30, "iris figures in the cloud database")
        assert stored(db, "iris") == iris.model_dump(mode="json")
        # figures saved while the sync role runs are reported too
        digits = bench(data_dir, "digits")
        wait_for(lambda: stored(db, "digits") == digits.model_dump(mode="json"), 30, "digits figures")

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"{base}/dashboard/login")
                page.fill("input[name=user]", USER)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/dashboard/")
                page.goto(f"{base}/dashboard/models")
                for fig in (iris, digits):
                    for r in fig.rows:
                        tr = page.locator(
                            f'#bench tr[data-device="{DEVICE}"][data-model="{fig.model}"]'
                            f'[data-batch="{r.batch}"][data-threads="{r.threads}"]'
                        )
                        expect(tr.locator("td.p50")).to_have_text(js_fixed(r.p50_ms))
                        expect(tr.locator("td.p99")).to_have_text(js_fixed(r.p99_ms))
                        expect(tr.locator("td.infer")).to_have_text(js_fixed(r.stages["infer"].p50_ms))
                        expect(tr.locator("td.rps")).to_have_text(js_fixed(r.throughput_rps, 1))
                    assert fig.memory_mb is not None
                    expect(page.locator(f'#bench tr[data-model="{fig.model}"] td.memory').first).to_have_text(
                        js_fixed(fig.memory_mb, 1)
                    )
                expect(page.locator("#bench tr[data-device]")).to_have_count(
                    len(iris.rows) + len(digits.rows)
                )
                page.screenshot(path=shots / "models-bench.png", full_page=True)
            finally:
                browser.close()

        out = console(base, "bench", "--json", token=TOKEN)
        assert out.returncode == 0, out.stderr
        shown = {
            (r["device"], r["model"]): ModelBench.model_validate(r["figures"]) for r in json.loads(out.stdout)
        }
        assert shown == {(DEVICE, "iris"): iris, (DEVICE, "digits"): digits}
        table = console(base, "bench", "--model", "iris", token=TOKEN)
        assert table.returncode == 0, table.stderr
        lines = [line.split() for line in table.stdout.splitlines() if line.startswith(DEVICE)]
        assert [(cols[1], int(cols[3]), cols[5]) for cols in lines] == [
            ("iris", r.batch, f"{r.p50_ms:.3f}") for r in iris.rows
        ]
    print(f"screenshots in {shots}")
