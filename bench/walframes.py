"""What each commit wrote: a copy of a SQLite WAL decoded frame by frame, against its database.

``python bench/walframes.py DATABASE WAL_COPY``

Copy ``agent.sqlite3-wal`` while the agent runs (before a checkpoint empties it), then run this
on the database and the copy: it prints the commits and frames the copy holds, the frames per
table or index (named with ``dbstat``; page 1 is the database header), and the same split
between commits that record results (workers, the camera, the batch role) and the others (a
job's insert). Each frame is one database page (512 bytes in a database the agent creates, 1 KiB
in older ones) + 24 bytes; ``write_bytes`` counts 4 KiB pages, so a commit costs about one 4 KiB
page plus its frames (docs/operations.md, "Write volume").
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
from pathlib import Path


def commits(wal: bytes) -> list[list[int]]:
    """The page numbers of each committed transaction in ``wal`` (valid frames only)."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    salt, offset = wal[16:24], 32
    out: list[list[int]] = []
    current: list[int] = []
    while offset + 24 + page_size <= len(wal):
        page, size_after = struct.unpack(">II", wal[offset : offset + 8])
        if wal[offset + 8 : offset + 16] != salt:  # a frame of an earlier WAL generation
            break
        current.append(page)
        offset += 24 + page_size
        if size_after:  # a commit frame
            out.append(current)
            current = []
    return out


def page_names(database: Path) -> dict[int, str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        names = {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
    names[1] = "page 1"
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("database", type=Path)
    p.add_argument("wal", type=Path, help="a copy of the database's WAL")
    args = p.parse_args(argv)
    names = page_names(args.database)
    found = commits(args.wal.read_bytes())
    results = names.keys() - {k for k, v in names.items() if v != "results"}
    groups = {
        "commits with results": [c for c in found if results & set(c)],
        "other commits": [c for c in found if not results & set(c)],
    }
    print(f"{len(found)} commits, {sum(map(len, found))} frames")
    for label, group in {"all": found, **groups}.items():
        count = collections.Counter(names.get(page, f"page {page}") for c in group for page in c)
        print(f"{label}: {len(group)} commits, {sum(count.values())} frames: {dict(count.most_common())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
