"""The gateway's OpenAPI document says what the gateway does: ``schemathesis run`` with every
check and every phase against a real gateway process finds nothing (docs/http-api.md,
"Conformance"). The fast path (serving/fastpath.py) answers the hot routes here too."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import copy_models
from tests.schemathesis import conformance
from tests.serving.gateway_proc import run_gateway

TOKEN = "conformance-token-0123456789"


def test_gateway_openapi_conformance(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris", "face", "digits_int8", "digits"])
    env = {"EDGE_API_TOKEN": TOKEN}
    with run_gateway(root, tmp_path / "data", env=env) as gw:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        doc = httpx.get(f"{gw.url}/openapi.json", headers=auth, timeout=10).json()
        assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
        run = conformance("gateway", f"{gw.url}/openapi.json", headers=auth)
        assert run.returncode == 0, run.stdout[-6000:]
        assert "passed" in run.stdout and "Tested: " in run.stdout, run.stdout[-2000:]
        assert gw.proc.poll() is None, gw.logs()[-3000:]


def test_405_names_every_method_of_the_path(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    with run_gateway(root, tmp_path / "data") as gw:
        r = httpx.put(f"{gw.url}/data/abc", timeout=5)
        assert r.status_code == 405 and r.json()["code"] == "http_error"
        assert sorted(m.strip() for m in r.headers["allow"].split(",")) == ["DELETE", "GET", "HEAD"]
        assert httpx.get(f"{gw.url}/v2/health/live", timeout=5).content == b""
        metrics = httpx.get(f"{gw.url}/metrics", timeout=5)
        assert metrics.headers["content-type"].startswith("text/plain")
        doc = httpx.get(f"{gw.url}/openapi.json", timeout=5).json()
        assert "securitySchemes" not in doc["components"]
        assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
        assert doc["paths"]["/v2/health/live"]["get"]["responses"]["200"].get("content", {}) == {}


def test_fast_path_answers_as_the_routed_endpoint(tmp_path: Path) -> None:
    """The hot routes skip FastAPI without a query string (serving/fastpath.py); with ``?raw=false``
    they go through it. Both must give the documented answers, byte for byte the same."""
    root = copy_models(tmp_path / "models", ["iris", "face"])
    bad_multipart = {"content-type": "multipart/form-data; boundary=abc"}
    cases = [
        ("/v1/models/face/predict", b"--abc\r\n[]--abc--\r\n", bad_multipart),  # was a 500 on the fast path
        ("/v1/models/face/predict", b"x", {"content-type": "multipart/form-data"}),
        ("/v1/models/iris/predict", b"{}", {"content-type": "application/json"}),
        ("/v1/models/nope/predict", b'{"data": [[1, 2, 3, 4]]}', {"content-type": "application/json"}),
        ("/v1/models/iris/predict", b'{"data": [[1, 2]]}', {"content-type": "application/json"}),
    ]
    with run_gateway(root, tmp_path / "data") as gw:
        doc = httpx.get(f"{gw.url}/openapi.json", timeout=5).json()
        documented = doc["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
        for path, body, headers in cases:
            fast = httpx.post(gw.url + path, content=body, headers=headers, timeout=10)
            routed = httpx.post(f"{gw.url}{path}?raw=false", content=body, headers=headers, timeout=10)
            assert (fast.status_code, fast.content) == (routed.status_code, routed.content), path
            assert str(fast.status_code) in documented and fast.status_code < 500, (path, fast.text)
        assert "internal" not in gw.logs()
