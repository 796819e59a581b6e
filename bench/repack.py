"""Repacking an upgraded device's database: what it costs once, and what it saves per result.

``python bench/repack.py [--mb 20] [--n 300] [--patterns "async job,sync-async"]``

An upgraded device's database: the current schema in a file of 1 KiB pages (as agents before
512-byte pages created it), filled with results and their outbox entries to ``--mb``, on the
real disk (``var/``, not a tmpfs: ``write_bytes`` counts block-layer writes).

* cost: ``edge_agent.repack.repack`` in a child process on that file: seconds, and the child's
  ``write_bytes`` (journal, SQLite's temporary copy, the file rewritten);
* saving: bench/wear.py's patterns on ``edge-agent up`` (serve and worker, 1 client) from a
  small upgraded database, kept at 1 KiB pages (held open by this process while ``up`` starts,
  so its repack refuses), repacked by ``up``, and created with 512-byte pages (the same rows):
  bytes written per result, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.wear import MODELS, PATTERNS, Agent, Side, checkpoint  # noqa: E402
from edge_agent.sqlitefile import UserVersion, connect, migrate, sql_script  # noqa: E402
from edge_agent.storage import DB_NAME, MIGRATIONS, new_id, pack_body  # noqa: E402

BODY = {"model": "iris", "version": "1", "results": [{"label": "setosa", "index": 0, "score": 0.97}]}

_CHILD = """
import json, sys, time
from pathlib import Path
from edge_agent.repack import repack
t = time.monotonic()
report = repack(Path(sys.argv[1]))
seconds = time.monotonic() - t
io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
print(json.dumps({"outcome": report.outcome, "seconds": seconds, "written": int(io["write_bytes"]),
                  "cancelled": int(io["cancelled_write_bytes"]),
                  "before": report.bytes_before, "after": report.bytes_after}))
"""


def upgraded(data: Path, mb: float, page_size: int = 1024) -> None:
    """A current-schema database of 1 KiB pages (or ``page_size``) holding ``mb`` MB of results
    and outbox rows."""
    data.mkdir(parents=True)
    conn = connect(data / DB_NAME, busy_timeout_s=5, page_size=page_size)
    conn.execute("BEGIN IMMEDIATE")
    migrate(conn, [sql_script(s) for s in MIGRATIONS], UserVersion(conn))
    conn.execute("COMMIT")
    body, t = pack_body(BODY), time.time()
    while (data / DB_NAME).stat().st_size < mb * 1e6:
        conn.execute("BEGIN")
        for _ in range(2000):
            rid = new_id()
            conn.execute(
                "INSERT INTO results (id, source, model, version, created, body) "
                "VALUES (?, 'async', 'iris', '1', ?, ?)",
                (rid, t, body),
            )
            conn.execute(
                "INSERT INTO outbox (seq, id, kind, body, created) "
                "VALUES (last_insert_rowid(), ?, 'result', '', ?)",
                (rid, t),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def cost(data: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(data)], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    doc: dict[str, float] = json.loads(out.splitlines()[-1])
    return doc


def per_result(work: Path, name: str, n: int, side: str) -> float:
    """``side``: "kept" (1 KiB pages, not repacked), "repacked" (by ``up``), "new" (created
    with 512-byte pages, the same rows)."""
    roles, fn = PATTERNS[name]
    data = work / f"{side}-{name.replace(' ', '-')}"
    upgraded(data, 0.2, 512 if side == "new" else 1024)
    keep = side == "kept"
    a = Agent(Side("new", ROOT), data, work / "models", roles, {})
    with contextlib.closing(sqlite3.connect(data / DB_NAME)) as holder:
        if keep:
            holder.execute("SELECT COUNT(*) FROM results").fetchone()  # open: the repack at start refuses
        else:
            holder.close()
        a.start()
    try:
        with contextlib.closing(sqlite3.connect(data / DB_NAME)) as conn:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
        if page != (1024 if keep else 512):
            raise RuntimeError(f"{data}: page size {page}")
        before = a.written()
        results = fn(a, n, 1)
        time.sleep(1.0)
        return (a.written() - before + checkpoint(data)) / max(results, 1)
    finally:
        a.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=20.0, help="size of the database repacked (default 20 MB)")
    p.add_argument("--n", type=int, default=300, help="operations per pattern (default 300; 0: cost only)")
    p.add_argument(
        "--patterns", default="async job,sync-async", help="comma-separated bench/wear.py patterns"
    )
    args = p.parse_args(argv)
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="repack-", dir=var))
    try:
        upgraded(work / "big", args.mb)
        c = cost(work / "big")
        print(
            f"repack of a {c['before'] / 1e6:.1f} MB database of 1 KiB pages: {c['outcome']}, "
            f"{c['seconds']:.2f} s, {c['written'] / 1e6:.1f} MB written ({c['cancelled'] / 1e6:.1f} MB of it "
            f"cancelled: temporary files deleted before writeback), {c['after'] / 1e6:.1f} MB after"
        )
        if args.n > 0:
            from tests.conftest import copy_models

            copy_models(work / "models", MODELS)
            print(f"\nbytes written per result, n={args.n}, 1 client")
            print(f"{'pattern':<16}{'1 KiB kept':>12}{'repacked':>12}{'new 512':>12}")
            for name in (s.strip() for s in args.patterns.split(",") if s.strip()):
                figures = [per_result(work, name, args.n, side) for side in ("kept", "repacked", "new")]
                print(f"{name:<16}" + "".join(f"{f / 1024:>8.1f} KiB" for f in figures))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
