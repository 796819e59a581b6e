"""The device database: migrations, WAL, results recorded with their outbox entry."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.storage import MIGRATIONS, Storage, StorageError
from tests.conftest import ROOT


def test_fresh_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    assert st.schema_version == len(MIGRATIONS)
    assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Storage.in_dir(tmp_path).schema_version == len(MIGRATIONS)  # idempotent reopen


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    st.conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    st.close()
    with pytest.raises(StorageError, match="newer than this agent knows"):
        Storage.in_dir(tmp_path)


def test_result_and_outbox_entry_are_one_transaction(tmp_path: Path) -> None:
    st = Storage.in_dir(tmp_path)
    with st.transaction() as conn:
        rid = st.record_result(conn, source="sync", model="iris", version="1", body={"label": "setosa"})
    assert st.result(rid).body == {"label": "setosa"}
    assert st.outbox_depth() == 1
    with pytest.raises(RuntimeError), st.transaction() as conn:
        st.record_result(conn, source="sync", model="iris", version="1", body={"x": 1})
        raise RuntimeError("power cut")
    assert st.outbox_depth() == 1 and len(st.results()) == 1
    with pytest.raises(sqlite3.IntegrityError), st.transaction() as conn:
        st.record_result(conn, source="sync", model="iris", version="1", body={}, result_id=rid)


def test_concurrent_processes_count_exactly(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from edge_agent.storage import Storage\n"
        "st = Storage.in_dir(Path(sys.argv[1]))\n"
        "for _ in range(200):\n"
        "    with st.transaction() as c: st.bump(c, 'n')\n"
    )
    Storage.in_dir(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert Storage.in_dir(tmp_path).counter("n") == 800


def test_a_full_disk_is_disk_full_not_a_masked_rollback_error(tmp_path: Path) -> None:
    """SQLite ends a transaction that hit SQLITE_FULL itself; the helper must raise that first
    error (as DiskFull, 507), not "cannot rollback - no transaction is active"."""
    import sqlite3 as sq

    from edge_agent.diskspace import DiskSpace
    from edge_agent.storage import DiskFull, Storage
    from tests.device import fill, small_filesystem

    with small_filesystem(tmp_path / "disk", 4) as disk:
        storage = Storage(disk / "agent.sqlite3", DiskSpace(disk, floor_bytes=0, reserve_bytes=0))
        fill(disk, disk / "ballast", 256 * 1024)
        with pytest.raises(DiskFull) as caught:
            for i in range(10_000):
                with storage.transaction(what="test rows") as conn:
                    storage.record_result(
                        conn, source="t", model="m", version="1", body={"x": "y" * 4000, "i": i}
                    )
        assert isinstance(caught.value.__cause__, sq.Error)
        assert caught.value.__cause__.sqlite_errorcode & 0xFF == 13  # SQLITE_FULL
        assert caught.value.status == 507 and "test rows" in caught.value.message
        assert storage.disk.refused["test rows"] == 1
        (disk / "ballast").unlink()
        with storage.transaction() as conn:  # the same connection works again once space is back
            storage.record_result(conn, source="t", model="m", version="1", body={"after": True})
        assert storage.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        storage.close()


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", range(20, 30)), ("refuse_new", range(10))])
def test_the_outbox_bound_holds_where_rows_are_written(tmp_path: Path, policy: str, kept: range) -> None:
    """No sync role runs here: the bound is applied in the transaction that records the result."""
    from edge_agent.storage import OUTBOX_DROPPED, OutboxBound

    st = Storage.in_dir(tmp_path, outbox=OutboxBound(10, policy))
    ids = []
    for i in range(30):
        with st.transaction() as conn:
            ids.append(st.record_result(conn, source="t", model="m", version="1", body={"i": i}))
        assert st.outbox_depth() <= 10
    left = [r[0] for r in st.conn.execute("SELECT id FROM outbox ORDER BY seq")]
    assert left == [ids[i] for i in kept]
    assert st.counter(OUTBOX_DROPPED) == 20
    assert len(st.results(limit=100)) == 30  # only forwarding is given up


def test_group_commit_shares_transactions_and_a_failing_write_fails_alone(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edge_agent.errors import InvalidInput

    st = Storage.in_dir(tmp_path)

    def write(i: int) -> str:
        def fn(conn: sqlite3.Connection) -> str:
            rid = st.record_result(conn, source="t", model="m", version="1", body={"i": i})
            if i == 7:
                raise InvalidInput("the seventh is bad")
            return rid

        return st.write(fn, f"write {i}")

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(write, i) for i in range(64)]
    with pytest.raises(InvalidInput, match="seventh"):
        futures[7].result()
    ids = {f.result() for i, f in enumerate(futures) if i != 7}
    stored = {r.id for r in st.results(limit=100)}
    assert stored == ids and len(ids) == 63  # the bad one was undone alone
    group = st._group
    assert group is not None and group.writes == 64 and group.groups < 64  # some were shared
    st.close()


def test_the_outbox_drains_while_new_work_is_refused(tmp_path: Path) -> None:
    """Under the reserve, new work is refused (507) but acknowledged rows can still be deleted:
    the reserve is what keeps the sync role draining (at 0 bytes free even a delete needs WAL
    space SQLite cannot get, which is why the reserve exists)."""
    from edge_agent.diskspace import DiskSpace
    from edge_agent.storage import DiskFull
    from edge_agent.sync.outbox import Outbox
    from edge_agent.sync.settings import SyncConfig
    from tests.device import fill, small_filesystem

    with small_filesystem(tmp_path / "disk", 16) as disk:
        st = Storage(disk / "agent.sqlite3", DiskSpace(disk, floor_bytes=4 << 20, reserve_bytes=2 << 20))
        with st.transaction() as conn:
            ids = [
                st.record_result(conn, source="t", model="m", version="1", body={"i": i}) for i in range(500)
            ]
        fill(disk, disk / "ballast", 1 << 20)
        assert st.disk.state(fresh=True).level == "refusing"
        with pytest.raises(DiskFull, match="retry later"):
            st.require_room("queueing a job")
        outbox = Outbox(st, "dev", lambda payload: None, SyncConfig())
        assert outbox.acknowledge(ids[:400]) == 400
        assert st.outbox_depth() == 100
        st.close()
