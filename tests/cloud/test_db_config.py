"""Choosing the cloud database in the config: CLOUD_DB_URL for PostgreSQL, else the SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_sync import cli
from cloud_sync.config import load_config
from cloud_sync.errors import ConfigError


def test_db_url_selects_postgresql_and_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "CLOUD_DB_URL": "postgresql://cloud:s3cret@db.internal:5432/cloud",
        "CLOUD_DB_PATH": "/tmp/x/c.sqlite3",
    }
    config = load_config(env=env)
    assert config.db_target == "postgresql://cloud:s3cret@db.internal:5432/cloud"
    assert config.redacted()["db_url"] == "***"
    assert "s3cret" not in repr(config)
    assert load_config(env={"CLOUD_DB_PATH": "/tmp/x/c.sqlite3"}).db_target == Path("/tmp/x/c.sqlite3")


def test_a_wrong_database_setting_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"CLOUD_DB_URL": "mysql://root@localhost/cloud"})
    assert "db_url must start with postgresql://" in str(caught.value)
    assert "root@localhost" not in str(caught.value)  # a URL may hold a password: not echoed
    with pytest.raises(ConfigError, match="a postgresql:// URL goes in db_url"):
        load_config(env={"CLOUD_DB_PATH": "postgresql://cloud@db/cloud"})


def test_the_cli_db_option_takes_a_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in ("CLOUD_DB_URL", "CLOUD_DB_PATH")]:
        monkeypatch.delenv(key, raising=False)
    code = cli.main(["migrate", "--db", "postgresql://cloud:pw@127.0.0.1:9/none"])
    assert code == cli.EXIT_STORE
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://cloud:***@127.0.0.1:9/none" in err and ":pw@" not in err
