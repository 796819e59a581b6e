"""SD-card wear: bytes written to the block layer per result, old code and new side by side.

``python bench/wear.py [--n 600] [--idle-s 600] [--baseline REV]``

For each pattern that writes, a fresh ``edge-agent up`` (real processes, a fresh data
directory on the real disk, not a tmpfs) gets ``--n`` operations; the figure is the growth of
``write_bytes`` in ``/proc/<pid>/io`` summed over the supervisor and every role process, from
just before the first request until every result is recorded (plus one second), plus what
the checkpoint of the frames still in the WAL then writes (run by the benchmark, so both
sides pay for every page they left to copy), divided by the results recorded.
``write_bytes`` counts page-cache pages a process dirtied for a file on a block device (4 KiB
each, counted again if the page was cleaned in between), which is what an SD card ends up
writing (before its own write amplification). Idle: the roles started and left alone for
``--idle-s`` seconds after a warm-up, scaled to an hour.

The old path is the code of ``--baseline`` (default: the commit before this work),
exported with ``git archive`` into a temporary directory and run from there with the same
venv and models: no legacy switch has to stay in the product to be measured. Patterns:

* async job: ``POST /async/iris`` (one row of four floats), ``--concurrency`` clients;
* batch item: ``POST /batch/items`` (10 rows per request), then one batch run;
* camera frame: the camera role on a looping video file, face model, recorded results;
* sync-async: ``POST /sync-async`` with an 8x8 digit PNG (fast answer + accurate job: two
  results per request, the figure is per result);
* prediction-cache fill: ``POST /predict`` with a distinct row each time (every one a miss
  whose answer is cached).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.patterns_support import wait_for  # noqa: E402
from tests.patterns.videos import write_face_video  # noqa: E402

BASELINE = "59be86b"  # main before the SD-card work (issue 14)
MODELS = ["iris", "digits", "digits_int8", "face"]
DIGIT_PNG = (ROOT / "models" / "digits" / "1" / "samples" / "digit_4.png").read_bytes()
TARGET_KB = 8.0
IDLE_TARGET_MB_H = 1.0


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def written(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass
class Side:
    name: str
    src: Path  # the source tree run: ROOT, or the exported baseline


@dataclass
class Agent:
    side: Side
    data: Path
    models: Path
    roles: list[str]
    extra: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from tests.serving.gateway_proc import free_port

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env.update(self.extra, EDGE_PORT=str(self.port), EDGE_UP__ROLES=json.dumps(self.roles))
        env.update(PYTHONPATH=str(self.side.src), EDGE_PRELOAD="true")
        cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(self.models)]
        cmd += ["--data-dir", str(self.data), "up"]
        log = (self.data.parent / f"{self.data.name}.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=self.side.src, stdout=log, stderr=log, start_new_session=True
        )
        wait_for(self._ready, 120, f"{self.side.name} gateway ({self.data})", step=0.2)
        time.sleep(1.0)  # every role started and settled

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"edge-agent up exited {self.proc.returncode}; see {self.data}.log")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def written(self) -> int:
        assert self.proc is not None
        return written(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def parallel(n: int, concurrency: int, one: Callable[[httpx.Client, int], None]) -> None:
    def work(k: int) -> None:
        with httpx.Client(timeout=60) as c:
            for i in range(k, n, concurrency):
                one(c, i)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, range(concurrency)))


def _ok(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 300:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    return r


def _jobs_done(url: str, n: int) -> bool:
    c = httpx.get(f"{url}/jobs").json()["counts"]
    return bool(c["done"] + c["failed"] >= n and c["queued"] == c["running"] == 0)


# -- the patterns: (roles, workload returning the number of results) -----------------------
def p_async(a: Agent, n: int, conc: int) -> int:
    parallel(
        n,
        conc,
        lambda c, i: _ok(c.post(f"{a.url}/async/iris", json={"data": [[5 + i * 1e-4, 3.4, 1.5, 0.2]]})),
    )
    wait_for(lambda: _jobs_done(a.url, n), 300, "the jobs")
    return n


def p_batch(a: Agent, n: int, conc: int) -> int:
    def one(c: httpx.Client, i: int) -> None:
        rows = [[5 + (i * 10 + k) * 1e-4, 3.4, 1.5, 0.2] for k in range(10)]
        _ok(c.post(f"{a.url}/batch/items", json={"model": "iris", "items": [{"data": r} for r in rows]}))

    parallel(n // 10, conc, one)
    _ok(httpx.post(f"{a.url}/batch/run"))
    wait_for(lambda: httpx.get(f"{a.url}/batch").json()["counts"]["pending"] == 0, 300, "the batch run")
    wait_for(lambda: httpx.get(f"{a.url}/batch").json()["counts"]["running"] == 0, 300, "the batch run")
    return n // 10 * 10


def p_camera(a: Agent, n: int, conc: int) -> int:
    status = a.data / "camera-status.json"

    def inferred() -> int:
        try:
            return int(json.loads(status.read_text())["frames_inferred"])
        except (OSError, ValueError, KeyError):
            return 0

    start = inferred()
    wait_for(lambda: inferred() - start >= n, 600, "the camera frames", step=0.2)
    return inferred() - start


def p_sync_async(a: Agent, n: int, conc: int) -> int:
    headers = {"content-type": "image/png"}
    parallel(n, conc, lambda c, i: _ok(c.post(f"{a.url}/sync-async", content=DIGIT_PNG, headers=headers)))
    wait_for(lambda: _jobs_done(a.url, n), 300, "the accurate jobs")
    return 2 * n  # two results per request: the fast answer and the accurate job's


def p_cache(a: Agent, n: int, conc: int) -> int:
    parallel(
        n, conc, lambda c, i: _ok(c.post(f"{a.url}/predict", json={"data": [[4 + i * 1e-3, 3.0, 1.5, 0.2]]}))
    )
    time.sleep(1.0)  # the cache's writer thread stores behind the answers
    return n


PATTERNS: dict[str, tuple[list[str], Callable[[Agent, int, int], int]]] = {
    "async job": (["serve", "worker"], p_async),
    "batch item": (["serve", "batch"], p_batch),
    "camera frame": (["serve", "camera"], p_camera),
    "sync-async": (["serve", "worker"], p_sync_async),
    "prediction-cache fill": (["serve"], p_cache),
}


def measure(side: Side, work: Path, name: str, args: argparse.Namespace, video: Path) -> float:
    roles, fn = PATTERNS[name]
    extra = {
        "EDGE_BATCH__INTERVAL_S": "3600",
        "EDGE_CAMERA__SOURCE": str(video),
        "EDGE_CAMERA__LOOP": "true",
        "EDGE_CAMERA__FPS": str(args.camera_fps),
    }
    extra.update(kv.split("=", 1) for kv in args.env)
    data = work / f"{side.name}-{name.replace(' ', '-')}"
    a = Agent(side, data, work / "models", roles, extra)
    a.start()
    try:
        before = a.written()
        results = fn(a, args.n, args.concurrency)
        time.sleep(1.0)
        roles = a.written() - before
        return (roles + checkpoint(data)) / max(results, 1)
    finally:
        a.stop()


def idle(side: Side, work: Path, args: argparse.Namespace) -> float:
    a = Agent(side, work / f"{side.name}-idle", work / "models", ["serve", "worker", "batch"], {})
    a.start()
    try:
        time.sleep(5.0)
        before = a.written()
        time.sleep(args.idle_s)
        return (a.written() - before) * 3600 / args.idle_s
    finally:
        a.stop()


def checkpoint(data: Path) -> int:
    """Bytes the checkpoint of what is still in the WAL writes (this process's write_bytes):
    pages not yet copied to the database file are a cost of these results, whichever side ran."""

    def own() -> int:
        line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("write_bytes:"))
        return int(line.split()[1])

    before = own()
    with sqlite3.connect(data / "agent.sqlite3") as conn:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        print(f"  warning: checkpoint of {data} was blocked by a reader", file=sys.stderr)
    return own() - before


def export(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=600, help="operations per pattern (default 600)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients (default 8)")
    p.add_argument("--camera-fps", type=float, default=10.0, help="camera frames per second (default 10)")
    p.add_argument("--idle-s", type=float, default=600.0, help="idle measurement window (default 600 s)")
    p.add_argument("--baseline", default=BASELINE, help=f"git revision of the old path (default {BASELINE})")
    p.add_argument("--patterns", default=",".join(PATTERNS), help="comma-separated subset")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="EDGE_X=V",
        help="a setting for both sides' agents, e.g. EDGE_WORKER__GROUP_WINDOW_S=0.15 (repeatable)",
    )
    args = p.parse_args(argv)
    names = [s.strip() for s in args.patterns.split(",") if s.strip()]
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wear-", dir=var))  # the real disk: a tmpfs counts nothing
    try:
        from tests.conftest import copy_models

        copy_models(work / "models", MODELS)
        video = write_face_video(work / "face.avi").path
        sides = [Side("old", export(args.baseline, work / "src-old")), Side("new", ROOT)]
        rows: list[tuple[str, str, float, float]] = []
        for name in names:
            old, new = (measure(s, work, name, args, video) for s in sides)
            rows.append((name, "KiB/result", old / 1024, new / 1024))
            print(f"  {name}: old {old / 1024:.1f} KiB, new {new / 1024:.1f} KiB", file=sys.stderr)
        if args.idle_s > 0:
            old, new = (idle(s, work, args) for s in sides)
            rows.append(("idle", "KiB/hour", old / 1024, new / 1024))
        print(
            f"\nbytes written per result (write_bytes of every role), n={args.n}, {args.concurrency} clients"
        )
        print(f"{'pattern':<24}{'unit':<12}{'old':>10}{'new':>10}{'old/new':>9}")
        for name, unit, o, n in rows:
            ratio = o / n if n > 0 else float("inf")
            print(f"{name:<24}{unit:<12}{o:>10.1f}{n:>10.1f}{ratio:>8.1f}x")
        idle_target = IDLE_TARGET_MB_H * 1024
        print(f"target: <= {TARGET_KB:.0f} KiB per small result, idle <= {idle_target:.0f} KiB/hour")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
