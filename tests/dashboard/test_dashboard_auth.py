"""Access to the dashboard and the API it uses, over plain HTTP against a real API process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud_sync.dashboard.auth import hash_password, verify_password
from tests.cloud import start_ingest, wait_for
from tests.dashboard import PASSWORD, USER, api_role, devices, logged_in
from tests.sync.broker import Broker, run_broker

DASHBOARD_ROUTES = [
    "/dashboard/",
    "/dashboard/devices/dev-a",
    "/dashboard/models",
    "/dashboard/results",
    "/dashboard/rollouts",
    "/dashboard/static/rollouts.js",
    "/dashboard/static/common.js",
    "/dashboard/static/fleet.js",
    "/dashboard/session",
    "/dashboard/events",
    "/dashboard/results.csv",
]
API_USED = ["/devices", "/devices/dev-a", "/results", "/telemetry?device=dev-a", "/commands/x", "/models"]
API_USED += ["/deployments", "/models/iris", "/rollouts"]
POSTS = [
    ("/commands", {"device": "dev-a", "name": "ping"}),
    ("/deployments", {"model": "iris", "version": "1", "all": True}),
    ("/rollouts", {"model": "iris", "version": "1", "all": True}),
    ("/dashboard/logout", None),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    work = tmp_path_factory.mktemp("dashboard-auth")
    db = work / "cloud.sqlite3"
    with run_broker(work / "broker") as broker:
        ingest = start_ingest(broker, db, work, "ingest-auth")
        try:
            with api_role(broker, db, work) as base, devices(broker, "dev-a"):
                yield broker, base
        finally:
            ingest.stop()


def test_password_hash_round_trip() -> None:
    stored = hash_password("s3cret-pass")
    assert stored.startswith("scrypt$") and "s3cret-pass" not in stored
    assert verify_password("s3cret-pass", stored)
    assert not verify_password("wrong", stored)
    assert not verify_password("s3cret-pass", "garbage")


@pytest.mark.parametrize("path", DASHBOARD_ROUTES + API_USED)
def test_unauthenticated_requests_are_refused(stack: tuple[Broker, str], path: str) -> None:
    r = httpx.get(stack[1] + path, timeout=5)
    assert r.status_code == 401, (path, r.status_code, r.text[:200])
    page = httpx.get(stack[1] + path, headers={"Accept": "text/html"}, timeout=5)
    assert page.status_code in (401, 303), path
    if page.status_code == 303:
        assert page.headers["location"] == "/dashboard/login"


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_posts_without_a_session_are_refused(stack: tuple[Broker, str], path: str, body: object) -> None:
    assert httpx.post(stack[1] + path, json=body, timeout=5).status_code == 401


def test_login_page_and_wrong_password(stack: tuple[Broker, str]) -> None:
    base = stack[1]
    assert httpx.get(f"{base}/dashboard/login").status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200
    bad = httpx.post(f"{base}/dashboard/login", data={"user": USER, "password": "nope"})
    assert bad.status_code == 401 and "edge_session" not in bad.cookies
    forged = httpx.get(f"{base}/devices", cookies={"edge_session": "eyJ1Ijoib3BlcmF0b3IifQ.forged"})
    assert forged.status_code == 401


def test_session_cookie_is_httponly_and_samesite_strict(stack: tuple[Broker, str]) -> None:
    r = httpx.post(f"{stack[1]}/dashboard/login", data={"user": USER, "password": PASSWORD})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


def test_with_a_session_reads_work_and_posts_need_the_csrf_token(stack: tuple[Broker, str]) -> None:
    client = logged_in(stack[1])
    try:
        wait_for(lambda: client.get("/devices").json()["devices"], 10, "dev-a in the store")
        assert client.get("/dashboard/").status_code == 200
        token = client.headers.pop("X-CSRF-Token")
        body = {"device": "dev-a", "name": "ping"}
        assert client.post("/commands", json=body).status_code == 403
        assert client.post("/commands", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
        sent = client.post("/commands", json=body, headers={"X-CSRF-Token": token})
        assert sent.status_code == 202, sent.text
        reply = client.get(f"/commands/{sent.json()['id']}", params={"wait": 10}).json()["reply"]
        assert reply["ok"] and reply["result"] == {"pong": True}
        csv = client.get("/dashboard/results.csv")
        assert csv.status_code == 200 and csv.text.startswith("id,device,model")
        assert client.post("/dashboard/logout").status_code == 403  # CSRF on logout too
        assert client.post("/dashboard/logout", headers={"X-CSRF-Token": token}).status_code == 303
    finally:
        client.close()
