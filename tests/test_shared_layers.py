"""The layers both ends share (edge_agent/access.py, edge_agent/sqlitefile.py): one copy, used by
the device and by the cloud, on real SQLite files."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from cloud_sync.config import cross_checks
from cloud_sync.errors import SchemaTooNew
from cloud_sync.store import Store
from edge_agent.access import LOOPBACK_HOSTS, bearer_ok, off_loopback_problem
from edge_agent.config import AgentConfig
from edge_agent.sqlitefile import SchemaTooNewError, UserVersion, connect, migrate, sql_script
from edge_agent.storage import Storage, StorageError


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        (b"Bearer s3cret", True),
        ("Bearer s3cre", False),
        ("bearer s3cret", False),
        ("s3cret", False),
        ("", False),
        ("Bearer s3cret ", False),
    ],
)
def test_a_bearer_header_must_match_exactly(header: str | bytes, ok: bool) -> None:
    assert bearer_ok(header, "s3cret") is ok


def test_both_configs_refuse_an_api_off_loopback_without_a_token_in_the_same_words() -> None:
    assert off_loopback_problem("host", "127.0.0.1", False, "X") is None
    assert off_loopback_problem("host", "0.0.0.0", True, "X") is None
    with pytest.raises(
        ValueError, match=re.escape("host '0.0.0.0' is not loopback: set api_token (EDGE_API_TOKEN)")
    ):
        AgentConfig(host="0.0.0.0")
    assert (
        "api_host '0.0.0.0' is not loopback: set api_token (CLOUD_API_TOKEN) so the API is not open to the network"
        in cross_checks({"api_host": "0.0.0.0"})
    )
    assert {"127.0.0.1", "::1", "localhost"} == LOOPBACK_HOSTS


def test_both_ends_open_their_files_the_same_way(tmp_path: Path) -> None:
    device = Storage(tmp_path / "device.sqlite3")
    cloud = Store(tmp_path / "cloud.sqlite3")
    for conn in (device.conn, cloud.db.conn):
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.isolation_level is None  # BEGIN IMMEDIATE is said explicitly
    device.close()
    cloud.close()


def test_migrate_applies_only_the_steps_a_file_has_not_seen(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.sqlite3", busy_timeout_s=1)
    steps = [
        sql_script("CREATE TABLE a (x); INSERT INTO a VALUES (1)"),
        sql_script("INSERT INTO a VALUES (2)"),
    ]
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, steps[:1], UserVersion(conn)) == 1
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, steps, UserVersion(conn)) == 2  # only the second runs
    conn.execute("COMMIT")
    assert [r[0] for r in conn.execute("SELECT x FROM a")] == [1, 2]
    with pytest.raises(SchemaTooNewError) as err:
        migrate(conn, steps[:1], UserVersion(conn))
    assert (err.value.version, err.value.known) == (2, 1)
    conn.close()


def test_a_file_from_a_newer_release_is_refused_by_each_end_in_its_own_words(tmp_path: Path) -> None:
    for name in ("device.sqlite3", "cloud.sqlite3"):
        raw = sqlite3.connect(tmp_path / name)
        raw.execute("PRAGMA user_version=999")
        raw.close()
    with pytest.raises(StorageError, match="schema version 999, newer than this agent knows"):
        Storage(tmp_path / "device.sqlite3")
    with pytest.raises(SchemaTooNew, match="schema version 999, newer than this cloud_sync knows"):
        Store(tmp_path / "cloud.sqlite3")


# -- one env-config loader (edge_agent/envconfig.py) ---------------------------------------
def test_both_loaders_list_every_problem_at_once_with_the_misspelt_variable() -> None:
    from cloud_sync.config import load_config as load_cloud
    from cloud_sync.errors import ConfigError as CloudConfigError
    from edge_agent.config import load_config as load_device
    from edge_agent.errors import ConfigError as DeviceConfigError

    with pytest.raises(DeviceConfigError) as device:
        load_device(env={"EDGE_BATCH__CORN": "0 3 * * *", "EDGE_BATCH__CHUNK": "0"})
    assert device.value.problems[:2] == [
        "unknown environment variable EDGE_BATCH__CORN; did you mean EDGE_BATCH__CRON?",
        "batch.chunk: Input should be greater than or equal to 1 (got '0')",
    ]
    with pytest.raises(CloudConfigError) as cloud:
        load_cloud(env={"CLOUD_API_TOKN": "t", "CLOUD_API_PORT": "http", "CLOUD_SDK_VERSION": "470.0.0"})
    assert cloud.value.problems == [
        "unknown environment variable CLOUD_API_TOKN; did you mean CLOUD_API_TOKEN?",
        "api_port: Input should be a valid integer, unable to parse string as an integer (got 'http')",
    ]  # CLOUD_SDK_VERSION: another tool's, ignored with a warning


def test_a_secret_is_never_echoed_in_a_problem() -> None:
    from cloud_sync.config import load_config as load_cloud
    from cloud_sync.errors import ConfigError as CloudConfigError
    from edge_agent.config import load_config as load_device
    from edge_agent.errors import ConfigError as DeviceConfigError

    with pytest.raises(DeviceConfigError) as device:
        load_device(env={"EDGE_SYNC__PASSWORD": "hunter2-secret", "EDGE_SYNC__BROKER_PORT": "0"})
    assert "hunter2-secret" not in device.value.message
    with pytest.raises(CloudConfigError) as cloud:
        load_cloud(env={"CLOUD_BROKER_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in cloud.value.message
    assert "broker_password is set without broker_username" in cloud.value.problems


def test_both_error_trees_answer_with_the_one_error_body() -> None:
    from cloud_sync.errors import CloudSyncError, NotFound
    from edge_agent.errors import CodedError, EdgeAgentError, ModelNotFound

    assert issubclass(CloudSyncError, CodedError) and issubclass(EdgeAgentError, CodedError)
    assert not issubclass(CloudSyncError, EdgeAgentError)  # two trees: callers catch their own
    cloud, device = NotFound("no device 'x'", device="x"), ModelNotFound("no model 'x'", model="x")
    assert cloud.to_dict() == {"error": "no device 'x'", "code": "not_found", "details": {"device": "x"}}
    assert device.to_dict() == {"error": "no model 'x'", "code": "model_not_found", "details": {"model": "x"}}
    assert (cloud.status, device.status) == (404, 404)
