"""The gateway's client of its model services: the hand-written HttpClient against httpx, end to end.

    python bench/service_client.py [--seconds 3] [--rounds 2] [--concurrency 1,8,32]

Starts one real ``model@iris`` and one real ``model@digits_int8`` service process
(``edge-agent model NAME --port P``) and drives each, from this process, through the gateway's
own code path: ``Services.infer`` (tensorwire request, HTTP round trip, tensorwire answer,
manifest check). The only difference between the two columns is the HTTP client under
``Services``: ``edge_agent.services.client.HttpClient`` (asyncio streams + httptools) or
``httpx.AsyncClient`` (keep-alive pool of 16 as the hand-written one, TCP_NODELAY set). Same event loop
(uvloop, as uvicorn runs the gateway), same requests, alternating in rounds so that drift on a
shared machine hits both. Prints requests per second and p50 latency per client and their ratio.

The issue's rule: keep the hand-written client only if it is at least 1.5x faster end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np

from edge_agent.config import ServicesConfig
from edge_agent.services.client import HttpResponse, Services, ServiceTimeout, ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 1.5
CASES = {  # model -> (input name, one request's tensor)
    "iris": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32),
    "digits_int8": np.random.default_rng(0).uniform(0, 16, size=(32, 1, 8, 8)).astype(np.float32),
}


class HttpxClient:
    """``HttpClient``'s interface over ``httpx.AsyncClient`` (what replacing it would look like)."""

    def __init__(self, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_keepalive_connections=16, max_connections=None)
        # TCP_NODELAY as the hand-written client has it: no Nagle stall between head and body
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=nodelay)
        self.client = httpx.AsyncClient(headers=headers, transport=transport)

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout_s: float,
        body: bytes = b"",
        content_type: str | None = None,
        service: str = "service",
    ) -> HttpResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            r = await self.client.request(method, url, content=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException:
            raise ServiceTimeout(f"{service} gave no answer within {timeout_s * 1000:.0f} ms") from None
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{service} is down: {exc}") from None
        return HttpResponse(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def close(self) -> None:
        pass  # closed by aclose() in the benchmark's loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(model: str, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(ROOT / "models"), "--data-dir"]
    cmd += [str(data_dir), "model", model, "--port", str(port)]
    log = (data_dir / f"{model}.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service at {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the service at {url} was not ready in {timeout_s} s")


async def drive(call: Callable[[], Awaitable[object]], seconds: float, concurrency: int) -> list[float]:
    """Closed loop: ``concurrency`` callers for ``seconds``; every call's latency (s)."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


async def measure(urls: dict[str, str], seconds: float, rounds: int, levels: list[int]) -> list[list[str]]:
    config = ServicesConfig(models=urls)
    hand = Services(config)
    via_httpx = Services(config)
    httpx_client = HttpxClient()
    via_httpx.http = httpx_client  # type: ignore[assignment]
    clients = {"hand": hand, "httpx": via_httpx}
    results: dict[tuple[str, int, str], list[float]] = {}
    rates: dict[tuple[str, int, str], list[float]] = {}
    for model, tensor in CASES.items():
        manifest = await hand.manifest(model, 5.0)
        tensors = {manifest.inputs[0].name: tensor}
        for services in clients.values():  # warm up: connections, manifests, the service's first runs
            await drive(lambda s=services, m=model, t=tensors: s.infer(m, t, 5.0), 0.5, max(levels))
        for rnd in range(rounds):
            order = list(clients) if rnd % 2 == 0 else list(reversed(clients))
            for c in levels:
                for name in order:
                    services = clients[name]
                    call = lambda s=services, m=model, t=tensors: s.infer(m, t, 5.0)  # noqa: E731
                    lat = await drive(call, seconds, c)
                    results.setdefault((model, c, name), []).extend(lat)
                    rates.setdefault((model, c, name), []).append(len(lat) / seconds)
    await httpx_client.client.aclose()
    hand.close()
    rows = []
    for model in CASES:
        for c in levels:
            rps = {n: statistics.median(rates[(model, c, n)]) for n in clients}
            p50 = {n: statistics.median(results[(model, c, n)]) * 1e3 for n in clients}
            rows.append(
                [
                    model,
                    str(c),
                    f"{rps['hand']:.0f}",
                    f"{rps['httpx']:.0f}",
                    f"{rps['hand'] / rps['httpx']:.2f}x",
                    f"{p50['hand']:.3f}",
                    f"{p50['httpx']:.3f}",
                    f"{p50['httpx'] / p50['hand']:.2f}x",
                ]
            )
    return rows


def table(rows: list[list[str]]) -> str:
    head = ["model", "c", "hand req/s", "httpx req/s", "hand/httpx"]
    head += ["hand p50 ms", "httpx p50 ms", "httpx/hand"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="per client, per level, per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (order flips each round)")
    p.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent callers")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        procs, urls = [], {}
        try:
            for model in CASES:
                port = free_port()
                procs.append(start_service(model, port, Path(tmp)))
                urls[model] = f"http://127.0.0.1:{port}"
            for url, proc in zip(urls.values(), procs, strict=True):
                wait_ready(url, proc)
            rows = uvloop.run(measure(urls, args.seconds, args.rounds, levels))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    print(table(rows))
    best = max(float(r[4].rstrip("x")) for r in rows)
    worst = min(float(r[4].rstrip("x")) for r in rows)
    print(
        f"\nhand-written / httpx throughput: {worst:.2f}x to {best:.2f}x end to end "
        f"(keep the hand-written client only at >= {THRESHOLD}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
