"""Ingest failover at size: two ingest processes on one PostgreSQL through an MQTT 5 shared
subscription, one hung (SIGSTOP) and then SIGKILLed while the results flow; every result id must
be stored exactly once and none lost (the simulated devices' outboxes re-send what was not
acknowledged). A real mosquitto and a real PostgreSQL (Debian's package, started in a temporary
directory with fsync on) on free loopback ports; the ingest roles as subprocesses.

    .venv/bin/python bench/ingest_failover.py                      # 50,000 results, ~2 min here
    .venv/bin/python bench/ingest_failover.py --results 5000 --devices 20

Prints one table: results sent, stored, distinct ids, lost, acknowledged, batches re-sent by the
devices, per-ingest counts and the wall time. The suite runs the same code with 5,000 results
(tests/cloud/test_failover.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cloud.failover import run_failover  # noqa: E402
from tests.conftest import PgUrl  # noqa: E402
from tests.pgserver import run_postgres  # noqa: E402
from tests.sync.broker import run_broker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=int, default=50_000, help="results in all (default 50,000)")
    p.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    p.add_argument("--batch", type=int, default=50, help="results per message (default 50)")
    p.add_argument("--stream-s", type=float, default=60.0, help="seconds of first sending (default 60)")
    args = p.parse_args()
    # SIGTERM unwinds like an exception: the servers and roles this started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, run_postgres(durable=True) as pg:
        work = Path(tmp)
        url = PgUrl(pg.create_database("failover"))
        url.state_dir = work
        with run_broker(work / "broker") as broker:
            run = run_failover(
                broker,
                url,
                work,
                results=args.results,
                devices=args.devices,
                batch=args.batch,
                stream_s=args.stream_s,
                timeout_s=600.0,
            )
    rows = [
        ("results sent", run.results),
        ("stored (rows)", run.stored),
        ("distinct ids stored", run.distinct),
        ("lost", len(run.missing)),
        ("stored twice", run.stored - run.distinct),
        ("acknowledged", run.acked),
        ("batches re-sent by devices", run.resent_batches),
        ("stored by ingest-a (killed)", run.by_ingest.get("ingest-a", 0)),
        ("stored by ingest-b", run.by_ingest.get("ingest-b", 0)),
        ("wall time s", round(run.seconds, 1)),
    ]
    print("| measure | value |\n| --- | ---: |")
    for name, value in rows:
        print(f"| {name} | {value:,} |" if isinstance(value, int) else f"| {name} | {value} |")
    ok = not run.missing and run.stored == run.distinct == run.results
    print("PASS: every result id stored exactly once" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
