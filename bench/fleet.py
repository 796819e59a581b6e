"""Fleet benchmark: simulated devices -> mosquitto -> ingest role(s) -> SQLite or PostgreSQL -> API.

Everything real and on this machine: mosquitto on a free loopback port, the cloud ingest and API
roles as subprocesses, PostgreSQL from Debian's package (started in a temporary directory, fsync
on), and bench/fleet_sim.py processes each running a slice of the fleet (one MQTT connection per
device, the real protocol, an outbox waiting for acks). Each configuration runs once at each
fleet size (``--devices 1000,10000``), one after the other in one invocation, and prints one row
of one table:

* devices connected; results produced/s and stored/s over the producing window (``--seconds``,
  which starts once every connection is open);
* created -> acknowledged p50/p99 (the ingest acknowledges after its commit, so this bounds
  created -> stored from above);
* CPU of the ingest role(s) and of the API (utime+stime from /proc, % of one core);
* API p99, polled four times a second throughout: a page of the fleet listing
  (``/devices?limit=100&cursor=``), a device's page (``/devices/{id}``), a results query
  filtered by device and label, paged (its first page and the next by cursor), and the fleet
  summary;
* lost and stored-twice results, counted by id against every id the simulators produced;
* the load average at the end of the window (the machine may be shared).

``--faults`` adds a run on PostgreSQL with two ingest roles at the largest size in which, at
25/50/75 % of the window, one ingest role is SIGKILLed, PostgreSQL is restarted, and mosquitto
is restarted. ``--preload N`` first inserts N results (directly, spread over the devices) into
each run at the largest size, so the API is measured against a large table. ``--dashboard
CONFIGS`` opens the fleet page in headless Chromium near the end of those runs (at the largest
size): page load and live-update bytes/s (bench/fleet_dashboard.py).

    .venv/bin/python bench/fleet.py --devices 1000 --seconds 60            # sqlite-1, pg-1, pg-2
    .venv/bin/python bench/fleet.py --devices 1000 --seconds 60 --faults
    .venv/bin/python bench/fleet.py --devices 1000,10000 --rate 0.1,0.02 --seconds 300 --procs 4 \
        --faults --preload 1000000 --dashboard sqlite-1,pg-1 --dashboard-s 60   # about 50 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fleet_dashboard import PageFigures, measure_page  # noqa: E402
from cloud_sync.store import Store  # noqa: E402
from cloud_sync.store.writes import INSERT_RESULT  # noqa: E402
from tests.cloud import Role, cloud_env, free_port, query, start_ingest, wait_for  # noqa: E402
from tests.conftest import CloudDb, PgUrl  # noqa: E402
from tests.dashboard import PASSWORD, PASSWORD_HASH, USER  # noqa: E402
from tests.pgserver import PgServer, run_postgres  # noqa: E402
from tests.sync.broker import Broker, run_broker  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = "fleet-bench-token"
PROBES = ("devices", "device", "results", "summary")
LABELS = ("setosa", "versicolor", "virginica")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Prober(threading.Thread):
    """Polls the API's read endpoints and records their latencies: a page of the fleet listing, a
    device's page, a results query filtered by device and label and paged (first page, then the
    next by cursor), and the fleet summary."""

    def __init__(self, base: str, devices: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        self.devices = devices
        self.stop = threading.Event()
        self.latency: dict[str, list[float]] = {k: [] for k in PROBES}
        self.errors = 0

    def _get(self, name: str, path: str, params: dict[str, str | int]) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            r = self.client.get(path, params=params)
        except httpx.HTTPError:
            self.errors += 1
            return None
        if r.status_code != 200:
            self.errors += 1
            return None
        self.latency[name].append((time.perf_counter() - started) * 1000)
        body: dict[str, Any] = r.json()
        return body

    def run(self) -> None:
        while not self.stop.wait(0.25):
            device = random.choice(self.devices)
            self._get("devices", "/devices", {"limit": 100, "cursor": device})
            self._get("device", f"/devices/{device}", {})
            query: dict[str, str | int] = {"device": device, "label": random.choice(LABELS), "limit": 50}
            page = self._get("results", "/results", query)
            if page and page.get("next_cursor"):
                self._get("results", "/results", query | {"cursor": page["next_cursor"]})
            self._get("summary", "/fleet/summary", {})


@dataclass
class Row:
    name: str
    devices: int = 0
    produced_s: float = 0.0
    stored_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    ingest_cpu: float = 0.0
    api_cpu: float = 0.0
    api_p99: dict[str, float] = field(default_factory=dict)
    api_errors: int = 0
    produced: int = 0
    lost: int = 0
    twice: int = 0
    left: int = 0
    faults: str = "-"
    rate: float = 0.0
    load: str = ""  # load average (1/5/15 min) at the end of the window
    page: PageFigures | None = None


@contextmanager
def api_role(broker: Broker, db: CloudDb, work: Path) -> Iterator[Role]:
    port = free_port()
    env = cloud_env(
        broker,
        db,
        api_port=str(port),
        api_token=TOKEN,
        log_level="WARNING",
        dashboard_user=USER,
        dashboard_password_hash=PASSWORD_HASH,
        session_secret="fleet-bench-session-secret",
    )
    role = Role(["api"], env, work / "api.log")
    role.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        wait_for(lambda: _healthy(role), 60, "the API")
        yield role
    finally:
        role.stop()


def _healthy(role: Role) -> bool:
    if not role.alive:
        raise RuntimeError(f"api exited:\n{role.text()}")
    try:
        return httpx.get(f"{role.base}/health", timeout=1).status_code == 200  # type: ignore[attr-defined]
    except httpx.TransportError:
        return False


def preload(db: CloudDb, devices: list[str], n: int) -> None:
    store = Store(db)
    t0 = time.time() - 86400
    try:
        with store.transaction() as tx:
            for d in devices:
                tx.execute(
                    "INSERT INTO devices (id, first_seen, last_seen) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    [d, t0, t0],
                )
        done = 0
        while done < n:
            rows = []
            for i in range(done, min(n, done + 20_000)):
                d = devices[i % len(devices)]
                label = ("setosa", "versicolor", "virginica")[i % 3]
                created = t0 + i * 86400 / n
                body = json.dumps({"label": label, "score": 0.5})
                rows.append(
                    # ..., then time_flag, device_created (None: a trusted clock), seq
                    (
                        f"pre-{i}",
                        d,
                        "pre",
                        "preload",
                        None,
                        "iris",
                        "1",
                        label,
                        created,
                        created,
                        "pre",
                        body,
                        None,
                        None,
                        i,
                    )
                )
            with store.transaction() as tx:
                tx.executemany(INSERT_RESULT, rows)
            done += len(rows)
        store.analyze()
    finally:
        store.close()


@dataclass(frozen=True)
class Run:
    name: str  # BACKEND-INGESTS[-faults]
    devices: int
    rate: float  # results/s per device
    preload: int
    dashboard: bool

    @property
    def backend(self) -> str:
        return self.name.split("-")[0]

    @property
    def ingests(self) -> int:
        return int(self.name.split("-")[1])

    @property
    def faults(self) -> bool:
        return self.name.endswith("faults")


def keep_logs(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in work.rglob("*.log"):
        shutil.copy(log, dest / log.name)


def run_config(args: argparse.Namespace, run: Run, pg: PgServer | None) -> Row:
    name, backend, ingests, faults = run.name, run.backend, run.ingests, run.faults
    row = Row(name)
    with tempfile.TemporaryDirectory(prefix=f"fleet-{name}-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        if args.logs:  # runs last: the roles' logs once every process has stopped
            stack.callback(keep_logs, work, args.logs / f"{name}-{run.devices}")
        db: CloudDb
        if backend == "pg":
            assert pg is not None
            url = PgUrl(
                pg.create_database(f"fleet_{name.replace('-', '_')}_{run.devices}_{int(time.time())}")
            )
            url.state_dir = work
            db = url
        else:
            db = work / "cloud.sqlite3"
        names = [f"{args.prefix}{i:05d}" for i in range(run.devices)]
        if run.preload:
            started = time.monotonic()
            preload(db, names, run.preload)
            print(
                f"  {name}: preloaded {run.preload:,} results in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        broker = stack.enter_context(run_broker(work / "broker"))
        extra = ["--shared"] if ingests > 1 else []
        roles = []
        for i in range(ingests):
            role = start_ingest(broker, db, work, f"ingest-{i}", *extra)
            stack.callback(role.stop)
            roles.append(role)
        api = stack.enter_context(api_role(broker, db, work))
        prober = Prober(api.base, names)  # type: ignore[attr-defined]
        procs = max(1, min(args.procs, -(-run.devices // 2500)))  # up to 2,500 devices a process
        per = -(-run.devices // procs)
        sims = []
        for k in range(procs):
            first, count = k * per, min(per, run.devices - k * per)
            if count <= 0:
                break
            out = work / f"sim-{k}.json"
            cmd = [
                sys.executable, str(ROOT / "bench" / "fleet_sim.py"), "--port", str(broker.port),
                "--devices", str(count), "--first", str(first), "--prefix", args.prefix,
                "--seconds", str(args.seconds), "--rate", str(run.rate),
                "--ramp", str(args.ramp / procs),
                "--drain-s", str(args.drain_s), "--out", str(out),
            ]  # fmt: skip
            sims.append((subprocess.Popen(cmd, cwd=ROOT), out))
        # the simulators produce for --seconds once their connections are open (the ramp): that is
        # the measured window
        time.sleep(run.devices / args.ramp + 1)
        cpu0 = [cpu_seconds(r.proc.pid) for r in roles], cpu_seconds(api.proc.pid)
        stored0 = int(query(db, "SELECT count(*) FROM results WHERE ingest != 'pre'")[0][0])
        prober.start()
        window = max(1.0, args.seconds - 1)
        started = time.monotonic()
        done_faults = []
        plan = (
            [(0.25, "ingest SIGKILL"), (0.5, "PostgreSQL restart"), (0.75, "broker restart")]
            if faults
            else []
        )
        for at, what in plan:
            time.sleep(max(0.0, started + at * window - time.monotonic()))
            if what == "ingest SIGKILL":
                roles[-1].proc.send_signal(signal.SIGKILL)
            elif what == "PostgreSQL restart" and pg is not None:
                pg.restart()
            elif what == "broker restart":
                broker.restart()
            done_faults.append(what)
        if run.dashboard:  # the fleet page open over the end of the window
            dash_s = min(args.dashboard_s, window / 2)
            time.sleep(max(0.0, started + window - dash_s - 30 - time.monotonic()))
            try:
                row.page = measure_page(api.base, USER, PASSWORD, run.devices, dash_s)  # type: ignore[attr-defined]
            except Exception as exc:  # a benchmark row still prints; the failure is shown
                print(f"  {name}: dashboard measure failed: {exc!r}", file=sys.stderr, flush=True)
        time.sleep(max(0.0, started + window - time.monotonic()))
        row.load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        elapsed = time.monotonic() - started
        cpu1 = [cpu_seconds(r.proc.pid) for r in roles], cpu_seconds(api.proc.pid)
        stored1 = int(query(db, "SELECT count(*) FROM results WHERE ingest != 'pre'")[0][0])
        prober.stop.set()
        prober.join(30)
        stats: list[dict[str, Any]] = []
        for proc, out in sims:
            proc.wait(args.seconds + args.drain_s + 120)
            stats.append(json.loads(out.read_text()))
        ids = [i for s in stats for i in s["ids"]]
        latencies = [x for s in stats for x in s["latencies"]]
        stored, distinct = query(
            db, "SELECT count(*), count(DISTINCT id) FROM results WHERE ingest != 'pre'"
        )[0]
        stored_ids = {r for (r,) in query(db, "SELECT id FROM results WHERE ingest != 'pre'")}
        row.devices = sum(s["connected"] for s in stats)
        row.produced = len(ids)
        row.produced_s = len(ids) / args.seconds
        row.rate = run.rate
        row.stored_s = (stored1 - stored0) / elapsed
        row.p50_ms, row.p99_ms = pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000
        row.ingest_cpu = sum(b - a for a, b in zip(cpu0[0], cpu1[0], strict=True)) / elapsed * 100
        row.api_cpu = (cpu1[1] - cpu0[1]) / elapsed * 100
        row.api_p99 = {k: pct(v, 0.99) for k, v in prober.latency.items()}
        row.api_errors = prober.errors
        row.lost = len(set(ids) - stored_ids)
        row.twice = int(stored) - int(distinct)
        row.left = sum(s["outbox_left"] for s in stats)
        row.faults = ", ".join(done_faults) or "-"
    return row


HEADER = (
    "| config | devices | results/s per device | produced/s | stored/s | created->acked p50 ms | p99 ms "
    "| ingest CPU % | API CPU % | API p99 ms listing/device/results/summary | produced | lost "
    "| stored twice | left in outboxes | faults | load avg |"
)
RULE = "| --- " + "| ---: " * 8 + "| --- " + "| ---: " * 4 + "| --- | --- |"


def table_row(r: Row) -> str:
    api = "/".join(f"{r.api_p99[k]:.0f}" for k in PROBES)
    return (
        f"| {r.name} | {r.devices:,} | {r.rate:g} | {r.produced_s:.0f} | {r.stored_s:.0f} | {r.p50_ms:.0f} "
        f"| {r.p99_ms:.0f} | {r.ingest_cpu:.0f} | {r.api_cpu:.0f} | {api} | {r.produced:,} "
        f"| {r.lost} | {r.twice} | {r.left} | {r.faults} | {r.load} |"
    )


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run of the matrix: each config at each fleet size; faults, the preload and the
    dashboard at the largest size only."""
    sizes = [int(x) for x in floats(args.devices)]
    rates = floats(args.rate)
    if len(rates) == 1:
        rates = rates * len(sizes)
    if len(rates) != len(sizes):
        raise SystemExit("--rate: one value, or one per --devices value")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    dashboard = {c.strip() for c in args.dashboard.split(",") if c.strip()}
    largest = max(sizes)
    runs = []
    for size, rate in zip(sizes, rates, strict=True):
        top = size == largest
        for config in configs + (["pg-2-faults"] if args.faults and top else []):
            preload_n = args.preload if top else 0
            runs.append(Run(config, size, rate, preload_n, top and config in dashboard))
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--devices", default="1000", help="simulated devices; a comma list runs each size (1000,10000)"
    )
    p.add_argument(
        "--seconds", type=float, default=60.0, help="seconds of producing per run (after the ramp)"
    )
    p.add_argument(
        "--rate", default="0.1", help="results per second per device; one value or one per --devices value"
    )
    p.add_argument(
        "--procs", type=int, default=1, help="simulator processes at most (2,500 devices each at most)"
    )
    p.add_argument("--ramp", type=float, default=200.0, help="device connections opened per second")
    p.add_argument(
        "--drain-s", type=float, default=120.0, help="seconds the devices wait for their last acks"
    )
    p.add_argument("--configs", default="sqlite-1,pg-1,pg-2", help="comma list of BACKEND-INGESTS")
    p.add_argument(
        "--faults",
        action="store_true",
        help="add a pg-2 run at the largest size with an ingest SIGKILL, PG and broker restarts",
    )
    p.add_argument(
        "--preload", type=int, default=0, help="results inserted before each run at the largest size"
    )
    p.add_argument(
        "--dashboard",
        default="",
        help="configs (at the largest size) in which the fleet page is measured in Chromium, e.g. pg-1",
    )
    p.add_argument("--dashboard-s", type=float, default=30.0, help="seconds of live updates counted")
    p.add_argument("--prefix", default="sim-", help="device name prefix")
    p.add_argument("--logs", type=Path, help="copy the roles' and broker's logs of each run here")
    args = p.parse_args()
    # SIGTERM unwinds like an exception: the servers and roles this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    runs = plan(args)
    rows = []
    print(HEADER, file=sys.stderr, flush=True)
    with run_postgres(durable=True) as pg:
        for run in runs:
            print(
                f"running {run.name}: {run.devices:,} devices at {run.rate:g}/s, {args.seconds:.0f} s ...",
                file=sys.stderr,
                flush=True,
            )
            row = run_config(args, run, pg)
            rows.append(row)
            print(table_row(row), file=sys.stderr, flush=True)  # a row as soon as it is known
    print(
        f"\n{args.seconds:.0f} s of producing per run"
        + (f"; {args.preload:,} results preloaded at the largest size" if args.preload else "")
        + "; API p99 polled four times a second; load average at the end of each window"
    )
    print(HEADER)
    print(RULE)
    for r in rows:
        print(table_row(r))
    for size in sorted({r.devices for r in rows}):
        base = next((r for r in rows if r.name == "sqlite-1" and r.devices == size), None)
        if base and base.stored_s and any(r.devices == size for r in rows if r is not base):
            others = [r for r in rows if r is not base and r.devices == size]
            ratios = ", ".join(f"{r.name} {r.stored_s / base.stored_s:.2f}x" for r in others)
            print(f"\n{size:,} devices, stored/s relative to sqlite-1: {ratios}")
    for r in rows:
        if r.page is not None:
            f = r.page
            print(
                f"\nfleet page, {r.name} at {r.devices:,} devices: load {f.load_ms:.0f} ms (median of 3; "
                f"first {f.first_load_ms:.0f} ms); live updates {f.bytes_s:,.0f} bytes/s "
                f"in {f.events} events "
                f"vs {f.whole_fleet_bytes_s:,.0f} bytes/s had each carried the whole fleet "
                f"({f.whole_fleet_bytes:,} bytes): {f.less:.1f}x less"
            )
    return 0 if all(r.lost == 0 and r.twice == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
