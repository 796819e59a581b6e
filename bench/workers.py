"""What an extra gateway worker costs in memory and gains in throughput.

    python bench/workers.py [--seconds 5] [--concurrency 16] [--rounds 2]

Starts `edge-agent serve --workers N` for N = 1 and 2 in alternating rounds (same models,
same load), drives it from a separate load process over real HTTP, and prints one table:
resident memory of the gateway processes (sum and per worker) and requests per second.
The load generator runs in its own process (asyncio + httpx, keep-alive connections) and
checks every answer's label.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BODY = {"data": [[5.1, 3.5, 1.4, 0.2]]}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


async def _load(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    """Closed-loop keep-alive clients on uvloop + httptools (bench/loadgen.py), pre-built requests."""
    import uvloop

    from bench.loadgen import build_request, connect

    host, port_path = url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    req = build_request(
        "POST", host, int(port), "/" + path, json.dumps(BODY).encode(), {"Content-Type": "application/json"}
    )
    ok = wrong = 0
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    conns = [await connect(host, int(port)) for _ in range(concurrency)]
    stop = time.monotonic() + seconds

    async def one(conn: Any) -> None:
        nonlocal ok, wrong
        while time.monotonic() < stop:
            status, body, _ = await conn.request(req)
            if status == 200 and json.loads(body)["results"][0]["label"] == "setosa":
                ok += 1
            else:
                wrong += 1

    await asyncio.gather(*(one(c) for c in conns))
    for c in conns:
        c.close()
    return ok, wrong


def load_main(url: str, seconds: float, concurrency: int) -> None:
    ok, wrong = asyncio.run(_load(url, seconds, concurrency))
    print(json.dumps({"ok": ok, "wrong": wrong}))


def run_round(work: Path, workers: int, seconds: float, concurrency: int) -> dict[str, float]:
    port_sock = __import__("socket").socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")} | {"EDGE_LOG_LEVEL": "WARNING"}
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--model-dir",
        str(work / "models"),
        "--data-dir",
        str(work / f"data{workers}"),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 10 and time.monotonic() < deadline:  # every worker has answered
            try:
                ready += httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.workers",
                "--load",
                f"{url}/v1/models/iris/predict",
                "--seconds",
                str(seconds),
                "--concurrency",
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        counts = json.loads(load.stdout.strip().splitlines()[-1])
        pids = [proc.pid] if workers == 1 else _children(proc.pid)
        pids = [p for p in pids if _rss_kib(p) > 0]
        rss = [_rss_kib(p) / 1024 for p in pids]
        return {
            "workers": workers,
            "req_s": counts["ok"] / seconds,
            "wrong": counts["wrong"],
            "rss_total_mib": sum(rss) + (_rss_kib(proc.pid) / 1024 if workers > 1 else 0.0),
            "rss_worker_mib": max(rss) if rss else 0.0,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="load duration per round")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    p.add_argument("--rounds", type=int, default=2, help="rounds per worker count (alternating)")
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        load_main(args.load, args.seconds, args.concurrency)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        for name in ("iris", "digits", "digits_int8", "face"):
            shutil.copytree(ROOT / "models" / name, work / "models" / name)
        print(f"command: {' '.join(sys.argv)}; CPUs: {os.cpu_count()}; load average {os.getloadavg()}")
        rows = [
            run_round(work, w, args.seconds, args.concurrency) for _ in range(args.rounds) for w in (1, 2)
        ]
        print(
            f"\n| workers | req/s (iris, /v1, c={args.concurrency}) | wrong | RSS of all its processes MiB | "
            "RSS per worker MiB |"
        )
        print("| ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['workers']} | {r['req_s']:.0f} | {r['wrong']} | {r['rss_total_mib']:.0f} | "
                f"{r['rss_worker_mib']:.0f} |"
            )
        one = [r["req_s"] for r in rows if r["workers"] == 1]
        two = [r["req_s"] for r in rows if r["workers"] == 2]
        print(
            f"\n2 workers / 1 worker throughput: {sum(two) / sum(one):.2f}x "
            f"(load average at end {os.getloadavg()})"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
