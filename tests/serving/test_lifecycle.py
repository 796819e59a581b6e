"""Gateway process lifecycle: SIGTERM under load, token auth, several workers."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from tests.conftest import MODELS, copy_models
from tests.serving.gateway_proc import run_gateway

ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()


async def _load(url: str, n: int, done: list[int]) -> list[httpx.Response | Exception]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:

        async def one() -> httpx.Response | Exception:
            try:
                r = await client.post(url, content=ASTRONAUT, headers={"content-type": "image/png"})
                done.append(1)
                return r
            except httpx.TransportError as exc:  # refused after the listener closed
                return exc

        return await asyncio.gather(*(one() for _ in range(n)))


def test_sigterm_mid_load_finishes_in_flight_and_exits_within_5s(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["face"])
    with run_gateway(root, tmp_path / "data") as gw:

        async def scenario() -> tuple[list[httpx.Response | Exception], float]:
            done: list[int] = []
            task = asyncio.create_task(_load(f"{gw.url}/v1/models/face/predict", 300, done))
            while len(done) < 10:  # the server is busy answering, the rest are in flight
                await asyncio.sleep(0.01)
            gw.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            results = await task
            while gw.proc.poll() is None and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            return results, time.monotonic() - t0

        results, exit_s = asyncio.run(scenario())
        # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is the normal exit
        assert gw.proc.returncode in (0, -signal.SIGTERM), gw.logs()
        assert "Application shutdown complete" in gw.logs()
        assert exit_s < 5.0
        answered = [r for r in results if isinstance(r, httpx.Response)]
        assert len(answered) > 10, "no request was in flight when SIGTERM arrived"
        for r in answered:
            # finished, or a clear error (503 / 504 with a message): never a 500 or a torn body
            assert r.status_code in (200, 503, 504), r.text
            body = r.json()
            if r.status_code == 200:
                assert body["results"][0]["boxes"][0]["score"] > 0.85
            else:
                assert body["error"]
        print(
            f"SIGTERM: {len(answered)} answered, {len(results) - len(answered)} refused, exit {exit_s:.2f} s"
        )


def test_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="not loopback: set api_token"):
        load_config(env={"EDGE_HOST": "0.0.0.0"})
    assert load_config(env={"EDGE_HOST": "0.0.0.0", "EDGE_API_TOKEN": "s3cret"}).host == "0.0.0.0"


def test_token_required_except_health(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    with run_gateway(root, tmp_path / "data", env={"EDGE_API_TOKEN": "s3cret-token"}) as gw:
        body = {"data": [[5.1, 3.5, 1.4, 0.2]]}
        for path in ("/health", "/v2/health/live", "/v2/health/ready"):
            assert httpx.get(gw.url + path).status_code == 200
        r = httpx.post(f"{gw.url}/v1/models/iris/predict", json=body)
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        bad = httpx.post(
            f"{gw.url}/v1/models/iris/predict", json=body, headers={"Authorization": "Bearer nope"}
        )
        assert bad.status_code == 401
        assert httpx.get(f"{gw.url}/metrics").status_code == 401
        assert httpx.post(f"{gw.url}/v2/repository/models/iris/unload").status_code == 401
        ok = httpx.post(
            f"{gw.url}/v1/models/iris/predict", json=body, headers={"Authorization": "Bearer s3cret-token"}
        )
        assert ok.status_code == 200 and ok.json()["results"][0]["label"] == "setosa"
        assert "s3cret-token" not in gw.logs()


def test_two_workers_share_the_port(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    with run_gateway(root, tmp_path / "data", args=("--workers", "2")) as gw:
        for _ in range(20):
            r = httpx.post(f"{gw.url}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
            assert r.status_code == 200
