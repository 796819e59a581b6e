"""Property-based fuzzing of the gateway against its own OpenAPI schema
(schemathesis): whatever a client sends, the answer is never a 5xx."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from edge_agent.config import AgentConfig
from edge_agent.serving.app import create_app
from tests.conftest import MODELS

_TMP = Path(tempfile.mkdtemp(prefix="edge-fuzz-"))
for _name in ("iris", "face", "digits_int8"):
    shutil.copytree(MODELS / _name, _TMP / "models" / _name)
APP = create_app(AgentConfig(model_dir=_TMP / "models", data_dir=_TMP / "data", preload=False))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    )
