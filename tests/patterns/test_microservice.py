"""Horizontal microservice end to end: the book's three one-vs-rest iris models as
real model@NAME processes, a real gateway fanning out to them over loopback HTTP.
The book's answer (virginica 0.3042130, honestly flagged weak); a killed, a hung
and an absent service degrade the answer instead of failing it; ``/health/all``."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from tests.helpers import EXPECTED, make_book_store
from tests.patterns.test_prep_pred import RoleProc, Roles
from tests.serving.gateway_proc import Gateway, run_gateway

NAMES = ["book_setosa", "book_versicolor", "book_virginica"]
CLASSES = {"book_setosa": "setosa", "book_versicolor": "versicolor", "book_virginica": "virginica"}
BOOK_ROW = EXPECTED["microservice_proxy"]["input"]
TIMEOUT_S = 0.5
BOOK_SCORES = {
    CLASSES["book_" + c["model"].removesuffix(".onnx").removeprefix("iris_svc_0_")]: c["probabilities"][0]
    for c in EXPECTED["cases"]
    if c["model"].startswith("iris_svc_0_")
}


@dataclass
class Fleet:
    roles: Roles
    gw: Gateway
    services: dict[str, RoleProc]
    prep: RoleProc
    engine: Engine

    def restart(self, *names: str) -> None:
        for name in names:
            self.services[name].stop()
            self.services[name] = self.roles.start("model", name, port=self.services[name].port)
        self.roles.wait(*(self.services[n] for n in names))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("microservice")
    models = make_book_store(tmp / "models")
    roles = Roles(models, tmp / "data")
    try:
        services = {n: roles.start("model", n) for n in NAMES}
        prep = roles.start("prep")
        roles.wait(prep, *services.values())
        env = {
            "EDGE_PRELOAD": "false",
            "EDGE_SERVICES__MICROSERVICE": json.dumps(NAMES),
            "EDGE_SERVICES__MODELS": json.dumps({n: s.url for n, s in services.items()}),
            "EDGE_SERVICES__PREP_URL": prep.url,
            "EDGE_SERVICES__TIMEOUT_S": str(TIMEOUT_S),
        }
        engine = Engine(ModelStore(models, tmp / "reference-state.json"))
        with run_gateway(models, tmp / "data", env=env) as gw:
            yield Fleet(roles, gw, services, prep, engine)
        engine.close()
    finally:
        roles.close()


@pytest.fixture
def full(fleet: Fleet) -> Iterator[Fleet]:
    """Every service up again after the test, whatever it did to them."""
    yield fleet
    for rp in fleet.services.values():
        if rp.proc.poll() is None:
            os.kill(rp.pid, signal.SIGCONT)
    fleet.restart(*(n for n, rp in fleet.services.items() if rp.proc.poll() is not None))


def ask(fleet: Fleet, rows: Any) -> httpx.Response:
    return httpx.post(f"{fleet.gw.url}/microservice/iris", json={"data": rows}, timeout=30)


def health(fleet: Fleet) -> dict[str, Any]:
    r = httpx.get(f"{fleet.gw.url}/health/all", timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def in_process(fleet: Fleet, rows: list[list[float]]) -> list[dict[str, float]]:
    x = {"float_input": np.asarray(rows, np.float32)}
    per_model = {CLASSES[n]: fleet.engine.predict(n, x).results for n in NAMES}
    return [{c: res[i]["probabilities"][0] for c, res in per_model.items()} for i in range(len(rows))]


def test_book_winner_is_virginica_and_flagged_weak(full: Fleet) -> None:
    r = ask(full, [BOOK_ROW])
    assert r.status_code == 200, r.text
    body = r.json()
    (row,) = body["results"]
    assert row["winner"] == EXPECTED["microservice_proxy"]["winner"] == "virginica"
    assert row["score"] == pytest.approx(EXPECTED["microservice_proxy"]["winner_probability"], abs=1e-5)
    assert row["weak"] is True
    assert row["scores"] == pytest.approx(BOOK_SCORES, abs=1e-5)
    assert row["scores"] == in_process(full, [BOOK_ROW])[0]
    assert body["unavailable"] == []
    assert {n: s["status"] for n, s in body["services"].items()} == dict.fromkeys(NAMES, "ok")


def test_a_batch_gets_one_answer_per_row(full: Fleet) -> None:
    rows = [BOOK_ROW, [5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]
    r = ask(full, rows)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    want = in_process(full, rows)
    assert [x["scores"] for x in results] == want
    assert [x["winner"] for x in results] == [max(w, key=w.__getitem__) for w in want]
    assert [x["weak"] for x in results] == [max(w.values()) < 0.5 for w in want]
    assert results[1]["winner"] == "setosa" and results[1]["weak"] is False


def test_bad_rows_are_a_4xx(full: Fleet) -> None:
    r = ask(full, [[1.0, 2.0, 3.0]])
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    assert "expected [N, 4]" in r.json()["error"]
    for bad in ("abc", [], [[1, 2], [3]]):
        assert ask(full, bad).status_code == 422
    r = httpx.post(f"{full.gw.url}/microservice/iris", json={"rows": [[1, 2, 3, 4]]}, timeout=10)
    assert r.status_code == 422


def test_health_all_reports_every_service(full: Fleet) -> None:
    body = health(full)
    assert body["status"] == "ok" and body["down"] == []
    assert body["gateway"]["status"] == "up"
    by_name = {e["name"]: e for e in body["services"]}
    assert set(by_name) == {"prep", *NAMES}
    for name in NAMES:
        assert by_name[name] | {"latency_ms": 0} == {
            "name": name,
            "role": "model",
            "url": full.services[name].url,
            "status": "up",
            "latency_ms": 0,
            "model": name,
            "version": "1",
            "backend": "onnx",
            "pid": full.services[name].pid,
        }
    assert by_name["prep"]["status"] == "up" and by_name["prep"]["role"] == "prep"


def test_a_killed_service_degrades_the_answer(full: Fleet) -> None:
    full.services["book_virginica"].stop(signal.SIGKILL)
    r = ask(full, [BOOK_ROW])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unavailable"] == ["book_virginica"]
    assert body["services"]["book_virginica"]["status"] == "down"
    assert "is down" in body["services"]["book_virginica"]["error"]
    (row,) = body["results"]
    assert set(row["scores"]) == {"setosa", "versicolor"}
    assert (row["winner"], row["weak"]) == ("setosa", True)
    assert row["score"] == pytest.approx(BOOK_SCORES["setosa"], abs=1e-5)
    h = health(full)
    assert (h["status"], h["down"]) == ("degraded", ["book_virginica"])

    full.restart("book_virginica")
    assert ask(full, [BOOK_ROW]).json()["results"][0]["winner"] == "virginica"
    assert health(full)["status"] == "ok"


def test_a_hung_service_is_cut_off_at_the_per_call_timeout(full: Fleet) -> None:
    hung = full.services["book_versicolor"]
    assert ask(full, [BOOK_ROW]).status_code == 200  # connections to every service are open and idle
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = ask(full, [BOOK_ROW])
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        body = r.json()
        assert TIMEOUT_S <= took < TIMEOUT_S + 1.0
        assert body["unavailable"] == ["book_versicolor"]
        assert body["services"]["book_versicolor"]["status"] == "timeout"
        assert body["results"][0]["winner"] == "virginica"
        assert "versicolor" not in body["results"][0]["scores"]
        h = health(full)
        assert h["down"] == ["book_versicolor"]
        entry = next(e for e in h["services"] if e["name"] == "book_versicolor")
        assert "no answer within 500 ms" in entry["error"]
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    r = ask(full, [BOOK_ROW])  # the late answers went to dropped connections, not to this call
    assert r.json()["unavailable"] == []
    assert r.json()["results"][0]["scores"] == pytest.approx(BOOK_SCORES, abs=1e-5)


def test_all_down_is_503_and_health_still_answers(full: Fleet) -> None:
    for rp in full.services.values():
        rp.stop()
    r = ask(full, [BOOK_ROW])
    assert (r.status_code, r.json()["code"]) == (503, "service_unavailable")
    assert r.json()["error"].startswith("no microservice answered: book_setosa: model@book_setosa at http")
    h = health(full)
    assert h["status"] == "degraded" and h["down"] == NAMES
    assert h["gateway"]["status"] == "up"


def test_unconfigured_members_are_reported_not_probed(tmp_path: Path, full: Fleet) -> None:
    """A fan-out member with no URL is 'unconfigured' in /health/all and unavailable in answers."""
    fleet = full
    env = {
        "EDGE_PRELOAD": "false",
        "EDGE_SERVICES__MICROSERVICE": json.dumps([*NAMES[:2], "book_missing"]),
        "EDGE_SERVICES__MODELS": json.dumps({n: fleet.services[n].url for n in NAMES[:2]}),
        "EDGE_SERVICES__PREP_URL": fleet.prep.url,
    }
    with run_gateway(fleet.roles.model_dir, tmp_path / "data", env=env) as gw:
        r = httpx.post(f"{gw.url}/microservice/iris", json={"data": BOOK_ROW}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["unavailable"] == ["book_missing"]
        assert r.json()["services"]["book_missing"]["status"] == "unconfigured"
        assert r.json()["results"][0]["winner"] == "setosa"
        h = httpx.get(f"{gw.url}/health/all", timeout=30).json()
        assert h["status"] == "ok"
        assert {e["name"]: e["status"] for e in h["services"]}["book_missing"] == "unconfigured"


def test_services_require_the_token_when_one_is_set(tmp_path: Path, full: Fleet) -> None:
    """With api_token set, model@NAME wants it on /infer and /metadata (not /health); the gateway sends it."""
    token = {"EDGE_API_TOKEN": "s3cret-token"}
    guarded = full.roles.start("model", "book_setosa", env=token)
    full.roles.wait(guarded)
    try:
        assert httpx.get(f"{guarded.url}/metadata", timeout=10).status_code == 401
        ok = httpx.get(
            f"{guarded.url}/metadata", headers={"authorization": "Bearer s3cret-token"}, timeout=10
        )
        assert ok.status_code == 200
        env = token | {
            "EDGE_PRELOAD": "false",
            "EDGE_SERVICES__MICROSERVICE": json.dumps(["book_setosa"]),
            "EDGE_SERVICES__MODELS": json.dumps({"book_setosa": guarded.url}),
            "EDGE_SERVICES__PREP_URL": full.prep.url,
        }
        with run_gateway(full.roles.model_dir, tmp_path / "data", env=env) as gw:
            auth = {"authorization": "Bearer s3cret-token"}
            r = httpx.post(f"{gw.url}/microservice/iris", json={"data": BOOK_ROW}, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["scores"] == pytest.approx(
                {"setosa": BOOK_SCORES["setosa"]}, abs=1e-5
            )
        env |= {"EDGE_API_TOKEN": "another-token"}  # a service refusing the gateway is an outage, not a 401
        with run_gateway(full.roles.model_dir, tmp_path / "data2", env=env) as gw:
            auth = {"authorization": "Bearer another-token"}
            r = httpx.post(f"{gw.url}/microservice/iris", json={"data": BOOK_ROW}, headers=auth, timeout=30)
            assert r.status_code == 503
            assert "refused the gateway's token" in r.json()["error"]
    finally:
        guarded.stop()
