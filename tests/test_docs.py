"""Docs land with the feature: every setting and every CLI command is documented."""

from __future__ import annotations

from edge_agent.cli import build_parser
from edge_agent.config import ENV_VARS, SECTION_ENV_VARS
from tests.conftest import ROOT

OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
README = (ROOT / "README.md").read_text()


def test_every_environment_variable_is_documented() -> None:
    missing = [env for env in [*ENV_VARS, *SECTION_ENV_VARS] if f"`{env}`" not in OPERATIONS]
    assert not missing, f"docs/operations.md lacks {missing}"


def test_every_cli_command_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    missing = [name for name in sub.choices if f"edge-agent {name}" not in README]
    assert not missing, f"README lacks {missing}"


def test_readme_quick_start_has_exactly_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]


def test_config_survives_the_trip_to_child_processes() -> None:
    from edge_agent.config import config_to_env, load_config

    config = load_config(
        env={
            "EDGE_SYNC__PASSWORD": "pw",
            "EDGE_API_TOKEN": "t",
            "EDGE_WORKER__LEASE_S": "7",
            "EDGE_BATCH__INTERVAL_S": "",
        }
    )
    assert config.batch.interval_s is None
    env = config_to_env(config)
    assert env["EDGE_SYNC__PASSWORD"] == "pw" and env["EDGE_API_TOKEN"] == "t"  # secrets passed, not masked
    assert load_config(env=env) == config
