"""Sync benchmark (bench/sync.py): its settings and the processes it starts (mosquitto, the cloud
ingest role, device sync roles), with their CPU times."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common.procs import env_without, free_port
from edge_agent.sync.settings import SyncConfig

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TARGET_RATIO = 5.0
DEFAULTS = SyncConfig()
WINDOW = DEFAULTS.max_inflight_messages  # the device's window; the raw publisher uses the same
BATCHED = DEFAULTS.batch_size
BIG_BATCH = 500
THROUGHPUT_POLL_S = 0.005
LATENCY_POLL_S = 0.002
START_TIMEOUT_S = 30.0
LABELS = ("setosa", "versicolor", "virginica")


@dataclass(frozen=True, slots=True)
class Budget:
    rounds: int  # drains per path, alternating between the paths
    batched: int  # results per drain, batch_size 100 and 500
    single: int  # results per drain, batch_size 1
    raw_repeat: int  # a raw burst publishes the batch-100 payloads of a batched drain this many times
    raw_single: int  # results per raw burst in single-result messages
    latency_s: float  # steady recording per latency path
    rate: float  # results/s recorded during the latency phase
    backlog: int  # results recorded while the cloud is down
    down_s: float  # how long the cloud stays down after the backlog is recorded
    ack_timeout_s: float | None  # the sync roles' ack_timeout_s (None: the default)


FULL = Budget(
    rounds=3,
    batched=30_000,
    single=1_500,
    raw_repeat=15,
    raw_single=10_000,
    latency_s=5.0,
    rate=100.0,
    backlog=10_000,
    down_s=3.0,
    ack_timeout_s=None,
)
QUICK = Budget(
    rounds=1,
    batched=2_000,
    single=150,
    raw_repeat=5,
    raw_single=1_000,
    latency_s=1.5,
    rate=100.0,
    backlog=1_000,
    down_s=1.0,
    ack_timeout_s=3.0,
)


class BenchError(RuntimeError):
    pass


# -- processes ---------------------------------------------------------------------------------------
def clean_env() -> dict[str, str]:
    """This environment without the agent's and the cloud's settings (the script sets its own)."""
    env = env_without("EDGE_", "CLOUD_")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_times(pid: int | str) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of a process, summed over its
    threads (``/proc/PID/task/*/schedstat``); without schedstat, CPU from ``/proc/PID/stat`` and
    no wait. (0, 0) once the process is gone."""
    cpu_ns = wait_ns = 0
    found = False
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                on_cpu, waiting, _ = (task / "schedstat").read_text().split()
                cpu_ns, wait_ns, found = cpu_ns + int(on_cpu), wait_ns + int(waiting), True
    if found:
        return cpu_ns / 1e9, wait_ns / 1e9
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, every core, from /proc/stat."""
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class Child:
    """A process this script started; its output goes to a log file. ``stop`` always ends it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def times(self) -> tuple[float, float]:
        return proc_times(self.proc.pid)

    def wait_log(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds since the start until ``needle`` appears in the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return time.perf_counter() - self.started
            self.check()
            time.sleep(0.02)
        raise BenchError(f"{self.name}: no {needle!r} in its log after {timeout_s:g} s:\n{self.tail()}")

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_broker(workdir: Path, nodelay: bool) -> tuple[Child, int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if nodelay:
        lines.append("set_tcp_nodelay true")
    conf.write_text("\n".join(lines) + "\n")
    broker = Child("mosquitto", [MOSQUITTO, "-c", str(conf)], clean_env(), workdir / "mosquitto.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        broker.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return broker, port
        except OSError:
            time.sleep(0.05)
    broker.stop()
    raise BenchError("mosquitto did not start listening in 10 s")


def wait_for(what: str, done: Callable[[], bool], timeout_s: float, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        check()
        time.sleep(THROUGHPUT_POLL_S)
