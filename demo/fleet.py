"""The fleet demo: a broker, the cloud service and two device agents on this machine.

    python demo/fleet.py [--workdir DIR] [--keep]

1. starts mosquitto on a free loopback port;
2. starts the cloud side (`cloud-sync ingest` and `cloud-sync api`) with a fresh signing key;
3. starts two devices (`edge-agent up`: gateway, worker, batch and sync roles), `demo-a` and `demo-b`;
4. sends sample traffic through several serving patterns on each device (synchronous,
   asynchronous, batch, sync-async, prediction cache);
5. shows the results arriving in the cloud store;
6. publishes a signed iris version 2 and rolls it out to both devices, with per-device progress,
   then checks that each device's gateway answers with version 2.

Every process is started here and stopped at the end (Ctrl-C included). Exit 0 when every step
checked out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEVICES = ("demo-a", "demo-b")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def say(text: str) -> None:
    print(text, flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.TransportError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


ROLES = ("serve", "worker", "batch", "sync")
MODELS = ("iris", "digits", "digits_int8", "face")


class Fleet:
    def __init__(
        self,
        work: Path,
        devices: tuple[str, ...] = DEVICES,
        roles: tuple[str, ...] = ROLES,
        models: tuple[str, ...] = MODELS,
        device_env: dict[str, str] | None = None,
    ) -> None:
        self.work = work
        self.devices, self.roles, self.models = devices, roles, models
        self.device_env = device_env or {}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker_port, self.api_port, *ports = free_ports(2 + len(devices))
        self.gateway_ports = dict(zip(devices, ports, strict=True))
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.cloud_http = httpx.Client(timeout=10)  # the cloud API client (a logged-in one when set)
        self.cloud_env = {
            "CLOUD_BROKER_PORT": str(self.broker_port),
            "CLOUD_DB_PATH": str(work / "cloud" / "cloud.sqlite3"),
            "CLOUD_API_PORT": str(self.api_port),
            "CLOUD_SIGNING_KEY_PATH": str(work / "cloud" / "signing.pem"),
            "CLOUD_LOG_LEVEL": "WARNING",
        }

    # -- processes ------------------------------------------------------------------------
    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work / "logs" / f"{name}.log").open("ab")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
        proc = subprocess.Popen(cmd, env=base | (env or {}), stdout=log, stderr=log, cwd=ROOT)
        self.procs.append((name, proc))

    def stop_all(self) -> None:
        self.cloud_http.close()
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say(f"   {name} did not stop in 15 s: killed")
                proc.kill()
                proc.wait()

    def cloud(self, *args: str) -> str:
        out = subprocess.run(
            [str(BIN / "cloud-sync"), *args],
            env={k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")} | self.cloud_env,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if out.returncode != 0:
            raise SystemExit(f"demo: cloud-sync {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    # -- steps ----------------------------------------------------------------------------
    def start_broker(self) -> None:
        if not Path(MOSQUITTO).exists():
            raise SystemExit(
                "demo: mosquitto is not installed (apt-get install mosquitto); `make demo` does that"
            )
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        )
        self.spawn("mosquitto", [MOSQUITTO, "-c", str(conf)])
        wait_for(
            "the broker", lambda: socket.create_connection(("127.0.0.1", self.broker_port), 0.5).close() or 1
        )
        say(f"1. broker: mosquitto on 127.0.0.1:{self.broker_port}")

    def start_cloud(self) -> None:
        (self.work / "cloud").mkdir(parents=True, exist_ok=True)
        self.cloud("keys", "generate")
        self.spawn("cloud-ingest", [str(BIN / "cloud-sync"), "ingest"], self.cloud_env)
        self.spawn("cloud-api", [str(BIN / "cloud-sync"), "api"], self.cloud_env)
        wait_for("the cloud API", lambda: self.cloud_http.get(f"{self.api}/health").status_code == 200)
        say(f"2. cloud: ingest + API on {self.api}, signing key {self.cloud_env['CLOUD_SIGNING_KEY_PATH']}")

    def start_devices(self) -> None:
        pub = str(self.work / "cloud" / "signing.pub.pem")
        for dev, port in self.gateway_ports.items():
            models = self.work / dev / "models"
            for name in self.models:
                shutil.copytree(ROOT / "models" / name, models / name)
            env = {
                "EDGE_DEVICE_ID": dev,
                "EDGE_MODEL_DIR": str(models),
                "EDGE_DATA_DIR": str(self.work / dev / "data"),
                "EDGE_PORT": str(port),
                "EDGE_LOG_LEVEL": "WARNING",
                "EDGE_UP__ROLES": json.dumps(list(self.roles)),
                "EDGE_BATCH__INTERVAL_S": "3600",
                "EDGE_SYNC__BROKER_HOST": "127.0.0.1",
                "EDGE_SYNC__BROKER_PORT": str(self.broker_port),
                "EDGE_SYNC__TRUSTED_KEYS": pub,
                "EDGE_SYNC__ARTIFACT_BASE_URL": self.api,
                "EDGE_SYNC__TELEMETRY_INTERVAL_S": "2",
            } | self.device_env
            self.spawn(f"{dev}-up", [str(BIN / "edge-agent"), "up"], env)
        for dev, port in self.gateway_ports.items():
            wait_for(
                f"{dev}'s gateway",
                lambda p=port: httpx.get(f"http://127.0.0.1:{p}/v2/health/ready").status_code == 200,
                120,
            )
        online = wait_for(
            "every device online in the cloud",
            lambda: (
                (d := self.cloud_http.get(f"{self.api}/devices").json())
                and sum(x.get("online", False) for x in _items(d)) >= len(self.devices)
                and d
            ),
        )
        say(
            f"3. devices: {', '.join(f'{d} (gateway :{p})' for d, p in self.gateway_ports.items())} "
            f"-> {len(_items(online))} online in the cloud"
        )

    def traffic(self) -> int:
        say("4. sample traffic through the serving patterns")
        face = (ROOT / "models" / "face" / "1" / "samples" / "astronaut.png").read_bytes()
        recorded = 0
        for dev, port in self.gateway_ports.items():
            g = f"http://127.0.0.1:{port}"
            sync = httpx.post(
                f"{g}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
            ).json()
            again = httpx.post(
                f"{g}/v1/models/face/predict", content=face, headers={"content-type": "image/png"}
            )
            cached = httpx.post(
                f"{g}/v1/models/face/predict", content=face, headers={"content-type": "image/png"}
            )
            box = again.json()["results"][0]["boxes"][0]
            jobs = [
                httpx.post(f"{g}/async/iris", json={"data": [[6.3, 3.3, 6.0, 2.5]]}).json()["job_id"]
                for _ in range(5)
            ]
            batch = httpx.post(
                f"{g}/batch/items", json={"model": "iris", "data": [[5.9, 3.0, 5.1, 1.8]] * 10}
            )
            httpx.post(f"{g}/batch/run")
            sa = httpx.post(f"{g}/sync-async", json={"data": np_digit()}).json()
            wait_for(f"{dev}'s async jobs", lambda g=g, jobs=jobs: all_done(g, jobs))
            wait_for(f"{dev}'s batch run", lambda g=g: batch_done(g) >= 10)
            recorded += len(jobs) + 10 + 2  # jobs, batch items, both halves of sync-async
            say(
                f"   {dev}: synchronous {[round(p[0], 3) for p in sync['prediction']]} ; "
                f"face {box['score']:.2f} at x {box['xmin']:.0f}-{box['xmax']:.0f} "
                f"(again: prediction cache {cached.json().get('cache', {}).get('prediction', '?')}) ; "
                f"{len(jobs)} async jobs done ; {len(_ids(batch.json()))} batch items done ; "
                f"sync-async fast answer {sa.get('fast', {}).get('results', [{}])[0].get('label', '?')}"
            )
        return recorded

    def results_in_cloud(self, expected: int) -> None:
        def stored() -> int:
            return sum(
                len(
                    _items(
                        self.cloud_http.get(f"{self.api}/results", params={"device": d, "limit": 500}).json()
                    )
                )
                for d in self.devices
            )

        got = wait_for(
            f"{expected} results in the cloud store", lambda: (n := stored()) >= expected and n, 60
        )
        say(
            f"5. cloud store: {got} results from {len(self.devices)} devices "
            "(outboxes drained, acknowledged end to end)"
        )

    def rollout(self) -> None:
        staged = self.work / "staging" / "iris" / "2"
        shutil.copytree(ROOT / "models" / "iris" / "1", staged)
        manifest = json.loads((staged / "manifest.json").read_text())
        manifest["version"] = "2"
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.cloud("models", "publish", str(staged))
        out = json.loads(self.cloud("deploy", "iris", "2", "--all", "--base-url", self.api, "--json"))
        dep = out.get("id") or out.get("deployment") or out
        say(f"6. rollout: iris 2 signed and published; deployment {dep} to every device")
        seen: dict[str, str] = {}

        def done() -> bool:
            doc = self.cloud_http.get(f"{self.api}/deployments/{dep}").json()
            for row in doc["devices"]:
                state = row["state"] + (f" ({row['reason']})" if row.get("reason") else "")
                if seen.get(row["device"]) != state:
                    seen[row["device"]] = state
                    say(f"   {row['device']}: {state}")
            return all(row["state"] in ("active", "failed") for row in doc["devices"]) and len(
                doc["devices"]
            ) >= len(self.devices)

        wait_for("the rollout", done, 120)
        if any(s.startswith("failed") for s in seen.values()):
            raise SystemExit("demo: the rollout failed on a device")
        for dev, port in self.gateway_ports.items():
            g = f"http://127.0.0.1:{port}"
            version = wait_for(
                f"{dev}'s gateway to serve iris 2", lambda g=g: serving_version(g) == "2" and "2", 30
            )
            say(f"   {dev}: gateway now answers with iris version {version}")


def all_done(gateway: str, jobs: list[str]) -> bool:
    return all(httpx.get(f"{gateway}/jobs/{j}").json()["status"] == "done" for j in jobs)


def batch_done(gateway: str) -> int:
    return int(httpx.get(f"{gateway}/batch").json()["counts"].get("done", 0))


def serving_version(gateway: str) -> str:
    doc = httpx.post(f"{gateway}/v1/models/iris/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).json()
    return str(doc["version"])


def _ids(doc: Any) -> list[Any]:
    return list(doc.get("ids", doc.get("items", []))) if isinstance(doc, dict) else list(doc)


def _items(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    for key in ("items", "devices", "results"):
        if isinstance(doc.get(key), list):
            return list(doc[key])
    return []


def np_digit() -> list[list[list[list[float]]]]:
    import numpy as np

    return (np.load(ROOT / "models" / "digits" / "1" / "samples" / "batch.npy")[:1]).tolist()  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workdir", type=Path, help="where state and logs go (default: a new temporary directory)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edge-fleet-demo-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(work)
    t0 = time.monotonic()
    try:
        fleet.start_broker()
        fleet.start_cloud()
        fleet.start_devices()
        fleet.results_in_cloud(fleet.traffic())
        fleet.rollout()
        say(f"fleet demo done in {time.monotonic() - t0:.0f} s; logs in {work / 'logs'}")
        return 0
    finally:
        fleet.stop_all()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
