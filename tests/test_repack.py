"""Repacking an upgraded device's database to 512-byte pages (``edge_agent/repack.py``): every row
kept, refused while another process has the file open or without room, atomic under SIGKILL, and
done by ``edge-agent up`` before the roles start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.cli import EXIT_ERROR, EXIT_OK, main
from edge_agent.repack import repack
from edge_agent.storage import DB_NAME, MIGRATIONS, PAGE_SIZE, Storage
from tests.conftest import ROOT, copy_models
from tests.device import small_filesystem
from tests.serving.gateway_proc import free_port
from tests.test_jobs_by_seq import PREVIOUS, previous_database

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _rows(path: Path) -> dict[str, Any]:
    """Every row of every table (rowid included), the schema version, page size and integrity."""
    with contextlib.closing(sqlite3.connect(path)) as conn:  # closed: a repack refuses while it is open
        # sqlite_sequence is left out: schema 6 removed its one user, and VACUUM drops it, empty
        user = "name NOT LIKE 'sqlite_%'"
        tables = [
            r[0] for r in conn.execute(f"SELECT name FROM sqlite_schema WHERE type = 'table' AND {user}")
        ]
        doc: dict[str, Any] = {
            t: conn.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in tables
        }
        doc["schema"] = conn.execute(
            f"SELECT type, name, sql FROM sqlite_schema WHERE {user} ORDER BY name"
        ).fetchall()
        doc["user_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
        doc["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return {"rows": doc, "page_size": page, "journal_mode": mode}


def _old(data: Path, jobs: int = 40, results: int = 30) -> dict[str, list[str]]:
    data.mkdir(parents=True, exist_ok=True)
    return previous_database(data / DB_NAME, jobs=jobs, results=results)


def _fill(path: Path, payload: int) -> None:
    """Give every job a random payload of ``payload`` bytes (bulk)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE jobs SET payload = randomblob(?)", (payload,))
        conn.commit()


def test_a_schema_8_database_with_1k_pages_is_repacked_keeping_every_row(tmp_path: Path) -> None:
    _old(tmp_path)
    before = _rows(tmp_path / DB_NAME)
    assert before["page_size"] == 1024 and before["rows"]["user_version"] == PREVIOUS
    assert before["rows"]["clock_corrections"] and before["rows"]["outbox"] and before["rows"]["jobs"]
    report = repack(tmp_path)
    assert report.outcome == "repacked" and report.ok, report
    assert (report.page_size_before, report.page_size_after) == (1024, PAGE_SIZE)
    after = _rows(tmp_path / DB_NAME)
    assert after["page_size"] == PAGE_SIZE and after["journal_mode"] == "wal"
    assert after["rows"] == before["rows"]  # every row, the version, integrity "ok"
    assert not (tmp_path / f"{DB_NAME}-journal").exists()
    assert repack(tmp_path).outcome == "not_needed"
    st = Storage.in_dir(tmp_path)  # the agent upgrades it as usual afterwards
    assert st.schema_version == len(MIGRATIONS) and st.outbox_depth() == len(before["rows"]["outbox"])
    st.close()


def test_a_current_schema_database_is_repacked_too(tmp_path: Path) -> None:
    _old(tmp_path)
    Storage.in_dir(tmp_path).close()  # schema 9, still 1 KiB pages
    before = _rows(tmp_path / DB_NAME)
    assert before["page_size"] == 1024 and before["rows"]["user_version"] == len(MIGRATIONS)
    assert repack(tmp_path).outcome == "repacked"
    after = _rows(tmp_path / DB_NAME)
    assert after["page_size"] == PAGE_SIZE and after["rows"] == before["rows"]


def test_nothing_to_do_without_a_database_and_a_page_size_sqlite_ignores_fails(tmp_path: Path) -> None:
    assert repack(tmp_path / "none").outcome == "absent"
    _old(tmp_path)
    before = _rows(tmp_path / DB_NAME)
    report = repack(tmp_path, page_size=700)  # not a power of two: SQLite keeps the old size
    assert report.outcome == "failed" and "VACUUM kept 1024-byte pages" in report.message, report
    assert _rows(tmp_path / DB_NAME) == before


_HOLD = """
import sys, time
from edge_agent.storage import Storage
st = Storage.in_dir(sys.argv[1])
st.outbox_depth()
print("open", flush=True)
time.sleep(60)
"""


def test_refused_while_another_process_has_the_file_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _old(tmp_path)
    before = _rows(tmp_path / DB_NAME)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], env=ENV, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        held = _rows(tmp_path / DB_NAME)  # as the holder left it (upgraded to the current schema)
        report = repack(tmp_path)
        assert report.outcome == "busy" and not report.ok, report
        assert "another process has it open" in report.message
        assert _rows(tmp_path / DB_NAME) == held and held["page_size"] == 1024
        assert main(["--data-dir", str(tmp_path), "storage", "repack"]) == EXIT_ERROR
        assert _rows(tmp_path / DB_NAME) == held
    finally:
        proc.kill()
        proc.wait()
    assert held["rows"]["jobs"] and len(held["rows"]["outbox"]) == len(before["rows"]["outbox"])
    assert main(["--data-dir", str(tmp_path), "storage", "repack", "--json"]) == EXIT_OK  # once closed
    assert "512-byte pages" in capsys.readouterr().out
    assert _rows(tmp_path / DB_NAME)["page_size"] == PAGE_SIZE


def test_left_as_it_is_without_room_for_the_copy(tmp_path: Path) -> None:
    _old(tmp_path)
    before = _rows(tmp_path / DB_NAME)
    size = (tmp_path / DB_NAME).stat().st_size
    report = repack(tmp_path, reserve_bytes=1 << 20, free_bytes=2 * size + (1 << 20) - 1)
    assert report.outcome == "no_space" and not report.ok, report
    assert "needs" in report.message and _rows(tmp_path / DB_NAME) == before
    assert repack(tmp_path, reserve_bytes=1 << 20, free_bytes=2 * size + (1 << 20)).outcome == "repacked"


def test_left_as_it_is_on_a_real_filesystem_too_small_for_the_copy(tmp_path: Path) -> None:
    _old(tmp_path / "src", jobs=3000, results=3000)
    _fill(tmp_path / "src" / DB_NAME, 800)  # ~3.5 MB, for a 5 MiB filesystem
    with small_filesystem(tmp_path / "disk", 5) as disk:
        (disk / "data").mkdir()
        shutil.copyfile(tmp_path / "src" / DB_NAME, disk / "data" / DB_NAME)
        before = _rows(disk / "data" / DB_NAME)
        report = repack(disk / "data", reserve_bytes=0)
        assert report.outcome == "no_space" and _rows(disk / "data" / DB_NAME) == before, report
        # past the check (a wrong free-space figure), the VACUUM itself hits the full disk: rolled
        # back by SQLite, the file as it was, back in WAL
        report = repack(disk / "data", reserve_bytes=0, free_bytes=1 << 40)
        assert report.outcome == "failed" and "file unchanged" in report.message, report
        assert "full" in report.message, report.message
        assert _rows(disk / "data" / DB_NAME) == before and before["journal_mode"] == "wal"


_REPACK = """
import sys
from edge_agent.cli import EXIT_ERROR, EXIT_OK, main
from edge_agent.repack import repack
print("start", flush=True)
repack(__import__("pathlib").Path(sys.argv[1]))
"""


def _hot_journal(path: Path) -> bool:
    """A rollback journal of a transaction not committed: its header starts with the magic (a
    committed one, kept while the repack holds its exclusive lock, has it zeroed)."""
    try:
        return path.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")
    except FileNotFoundError:
        return False


def test_a_repack_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    """SIGKILL the VACUUM of a ~10 MB database at spread-out moments: each time the file holds
    1 KiB pages or 512-byte ones, integrity ok, every row identical; the next repack finishes."""
    template = tmp_path / "template"
    _old(template, jobs=20_000, results=20_000)
    _fill(template / DB_NAME, 400)  # ~10 MB
    before = _rows(template / DB_NAME)
    seen: set[int] = set()
    journals = 0
    for k, delay in enumerate((0.0, 0.03, 0.06, 0.1, 0.15, 0.25, 0.5, 2.0)):
        d = tmp_path / f"db{k}"
        d.mkdir()
        (d / DB_NAME).write_bytes((template / DB_NAME).read_bytes())
        proc = subprocess.Popen([sys.executable, "-c", _REPACK, str(d)], env=ENV, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"start\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hot = _hot_journal(d / f"{DB_NAME}-journal")  # killed inside the VACUUM, before its commit
        after = _rows(d / DB_NAME)  # the first opener rolls a hot journal back
        assert after["page_size"] == 1024 if hot else after["page_size"] in (1024, PAGE_SIZE)
        assert after["rows"] == before["rows"], k
        seen.add(after["page_size"])
        journals += hot
        assert repack(d).ok and _rows(d / DB_NAME)["page_size"] == PAGE_SIZE
    print("page sizes seen after the kills:", sorted(seen), "; hot journals rolled back:", journals)
    assert seen == {1024, PAGE_SIZE} and journals, (seen, journals)


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_up_repacks_an_old_database_before_the_roles_start_and_serves(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    data = tmp_path / "data"
    ids = _old(data)
    port = free_port()
    env = {k: v for k, v in ENV.items() if not k.startswith("EDGE_")}
    env.update(EDGE_PORT=str(port), EDGE_UP__ROLES=json.dumps(["serve"]))
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(root), "--data-dir", str(data), "up"]
    sup = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _serving(url):
            assert time.monotonic() < deadline and sup.poll() is None, "the gateway did not come up"
            time.sleep(0.1)
        assert httpx.post(f"{url}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
        job = httpx.get(f"{url}/jobs/{ids['fresh'][0]}")
        assert job.status_code == 200 and job.json()["status"] == "queued", job.text
        with contextlib.closing(sqlite3.connect(data / DB_NAME)) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    finally:
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=20)
    assert sup.returncode == 0
    assert "repacked from 1024-byte to 512-byte pages" in err, err[-2000:]
