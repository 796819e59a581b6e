"""The cloud API's OpenAPI document (dashboard routes included) says what the API does:
``schemathesis run`` with every check and every phase against a real API process with a real
broker and SQLite file finds nothing (docs/cloud-sync.md, "Conformance")."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.cloud import Role, cloud_env, free_port, wait_for
from tests.dashboard import api_role
from tests.schemathesis import conformance
from tests.sync.broker import run_broker

TOKEN = "conformance-cloud-token"


def test_cloud_openapi_conformance(tmp_path: Path) -> None:
    db = tmp_path / "cloud.sqlite3"
    with run_broker(tmp_path / "broker") as broker, api_role(broker, db, tmp_path, api_token=TOKEN) as base:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        doc = httpx.get(f"{base}/openapi.json", headers=auth, timeout=10).json()
        assert set(doc["components"]["securitySchemes"]) == {"bearer", "session"}
        assert "/dashboard/login" in doc["paths"] and "/dashboard/results.csv" in doc["paths"]
        assert "security" not in doc["paths"]["/health"]["get"]
        run = conformance("cloud", f"{base}/openapi.json", headers=auth)
        assert run.returncode == 0, run.stdout[-6000:]
        assert "passed" in run.stdout, run.stdout[-2000:]
        # what the fuzzer found once (seed 3): an offset past SQLite's integers was a 500
        r = httpx.get(f"{base}/results", params={"offset": 10**23}, headers=auth, timeout=5)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
        allow = httpx.put(f"{base}/commands", headers=auth, timeout=5)
        assert allow.status_code == 405 and allow.headers["allow"] == "GET, HEAD, POST"


def test_cloud_openapi_conformance_without_a_login(tmp_path: Path) -> None:
    """The default: no token, no dashboard user. The API is open on loopback, the dashboard
    refuses everything but its login form; the document says so (no security schemes)."""
    port = free_port()
    with run_broker(tmp_path / "broker") as broker:
        env = cloud_env(broker, tmp_path / "cloud.sqlite3", api_port=str(port), log_level="WARNING")
        role = Role(["api"], env, tmp_path / "api.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _connected(base, role), 20, "the API")
            doc = httpx.get(f"{base}/openapi.json", timeout=10).json()
            assert "securitySchemes" not in doc["components"]
            run = conformance("cloud", f"{base}/openapi.json", examples=10)
            assert run.returncode == 0, run.stdout[-6000:]
            # an unserved method is a 405 before any login is asked for
            r = httpx.request("TRACE", f"{base}/dashboard/", timeout=5)
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
            assert httpx.get(f"{base}/dashboard/", timeout=5).status_code == 401
        finally:
            role.stop()


def _connected(base: str, role: Role) -> bool:
    if not role.alive:
        raise AssertionError(f"api exited:\n{role.text()}")
    try:
        return httpx.get(f"{base}/health", timeout=1).json()["broker_connected"] is True
    except httpx.TransportError:
        return False
