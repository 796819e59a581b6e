"""Prediction cache and data cache end to end: a real gateway process over real HTTP.

A repeated request is answered from the cache with the same answer; identical
concurrent requests run the model once; after a version switch the old
version's answer is never returned; after a restart cached answers still hit.
A registered image is preprocessed once per preprocessing; the data cache
stays under its byte bound by evicting the least recently used tensors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.cache.test_data_cache import png
from tests.cache.test_prediction_cache import BOOK_IRIS, add_book_iris_version
from tests.conftest import DATA, MODELS, copy_models
from tests.helpers import EXPECTED
from tests.serving.gateway_proc import Gateway, run_gateway

CAT = (DATA / "cat.jpg").read_bytes()
ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()
ROW = [5.1, 3.5, 1.4, 0.2]
FACE_TENSOR_BYTES = 128 * 128 * 3 * 4 + 256  # .npy + geometry header, roughly
ENV = {
    "EDGE_CACHE__PREDICTION_DISABLED_MODELS": '["iris_setosa"]',
    "EDGE_CACHE__DATA_MAX_BYTES": str(2 * FACE_TENSOR_BYTES + 1000),  # two face tensors fit, not three
}


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def events(gw: Gateway, cache: str) -> dict[str, float]:
    return {
        e: metric(gw, "edge_cache_events_total", cache=cache, event=e)
        for e in ("hit", "miss", "coalesced", "eviction")
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("caches")
    root = copy_models(tmp / "models", ["iris", "iris_setosa", "face"])
    with run_gateway(root, tmp / "data", env=ENV) as gateway:
        yield gateway


# -- prediction cache -----------------------------------------------------------------
def test_same_request_twice_second_is_a_hit_with_the_same_answer(gw: Gateway) -> None:
    url = f"{gw.url}/v1/models/face/predict?raw=true"
    before = events(gw, "prediction")
    first = httpx.post(url, content=ASTRONAUT, headers={"content-type": "image/png"}).json()
    second = httpx.post(url, content=ASTRONAUT, headers={"content-type": "image/png"}).json()
    assert delta(events(gw, "prediction"), before) == {"miss": 1, "hit": 1}
    assert first["results"] == second["results"] and first["results"][0]["boxes"]
    assert first["outputs"] == second["outputs"]
    assert first["timings_ms"]["infer"] > 0 and first["timings_ms"]["preprocess"] > 0
    hit = second["timings_ms"]
    assert hit["infer"] == hit["preprocess"] == 0.0 and "cache_lookup" in hit
    assert hit["total"] < first["timings_ms"]["total"] / 5
    print(f"face over HTTP, server side: miss {first['timings_ms']['total']} ms, hit {hit['total']} ms")


def test_json_rows_and_npy_body_share_an_entry(gw: Gateway) -> None:
    url = f"{gw.url}/v1/models/iris/predict"
    row = [6.1, 2.8, 4.7, 1.2]
    before = events(gw, "prediction")
    as_json = httpx.post(url, json={"data": [row]}).json()
    buf = io.BytesIO()
    np.save(buf, np.asarray([row], dtype=np.float32))
    as_npy = httpx.post(url, content=buf.getvalue(), headers={"content-type": "application/x-npy"}).json()
    assert delta(events(gw, "prediction"), before) == {"miss": 1, "hit": 1}
    assert as_npy["results"] == as_json["results"]


def test_disabled_model_is_never_cached(gw: Gateway) -> None:
    before = events(gw, "prediction")
    for _ in range(2):
        r = httpx.post(f"{gw.url}/v1/models/iris_setosa/predict", json={"data": [ROW]}).json()
        assert r["timings_ms"]["infer"] > 0 and "cache_lookup" not in r["timings_ms"]
    assert delta(events(gw, "prediction"), before) == {}


def test_answer_by_digest_without_the_upload(gw: Gateway) -> None:
    image = CAT + os.urandom(8)  # after the JPEG end marker: a new key, the same picture
    sha = hashlib.sha256(image).hexdigest()
    by_digest = f"{gw.url}/v1/models/face/predictions/{sha}"
    miss = httpx.get(by_digest)
    assert miss.status_code == 404 and miss.headers["content-type"] == "application/json"
    assert miss.json()["code"] == "prediction_not_cached"
    assert miss.json()["details"]["upload"] == "/v1/models/face/predict"
    sent = httpx.post(
        f"{gw.url}/v1/models/face/predict", content=image, headers={"content-type": "image/jpeg"}
    )
    assert sent.json()["cache"] == {"prediction": "miss"}
    before = events(gw, "prediction")
    hit = httpx.get(by_digest + "?raw=true")
    assert hit.status_code == 200, hit.text
    assert delta(events(gw, "prediction"), before) == {"hit": 1}
    doc = hit.json()
    assert doc["cache"] == {"prediction": "hit"} and doc["model"] == "face"
    assert doc["results"] == sent.json()["results"] and "boxes" in doc["results"][0]
    assert doc["timings_ms"]["infer"] == 0.0 and "outputs" in doc


def test_a_data_item_id_is_a_digest_too(gw: Gateway) -> None:
    image = CAT + os.urandom(8)
    item = httpx.post(f"{gw.url}/data", content=image, headers={"content-type": "image/jpeg"}).json()["id"]
    assert httpx.get(f"{gw.url}/v1/models/face/predictions/{item}").status_code == 404
    computed = httpx.post(f"{gw.url}/v1/models/face/predict/data/{item}").json()
    hit = httpx.get(f"{gw.url}/v1/models/face/predictions/{item}").json()
    assert hit["cache"] == {"prediction": "hit"} and hit["results"] == computed["results"]


@pytest.mark.parametrize(
    ("path", "status", "code", "needle"),
    [
        ("/v1/models/face/predictions/abc", 422, "invalid_input", "64 lowercase hex digits"),
        (f"/v1/models/face/predictions/{'A' * 64}", 422, "invalid_input", "64 lowercase hex digits"),
        (f"/v1/models/iris/predictions/{'a' * 64}", 422, "invalid_input", "image models only"),
        (f"/v1/models/nope/predictions/{'a' * 64}", 404, "model_not_found", "no model named 'nope'"),
    ],
)
def test_bad_digest_lookups_are_clear_4xx(
    gw: Gateway, path: str, status: int, code: str, needle: str
) -> None:
    r = httpx.get(gw.url + path)
    assert r.status_code == status and r.json()["code"] == code and needle in r.json()["error"], r.text


def test_openapi_documents_the_digest_lookup(gw: Gateway) -> None:
    op = httpx.get(f"{gw.url}/openapi.json").json()["paths"]["/v1/models/{name}/predictions/{sha256}"]["get"]
    assert set(op["responses"]) >= {"200", "404", "422", "503"}
    assert "prediction_not_cached" in op["responses"]["404"]["description"]


def test_20_concurrent_identical_requests_run_the_model_once(gw: Gateway) -> None:
    body = {"data": [[7.7, 2.6, 6.9, 2.3]]}
    before = events(gw, "prediction")
    rows_before = metric(gw, "edge_batch_size_sum", model="iris")

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"{gw.url}/v1/models/iris/predict", json=body) for _ in range(20))
            )

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert len({str(r.json()["results"]) for r in responses}) == 1
    assert metric(gw, "edge_batch_size_sum", model="iris") - rows_before == 1
    d = delta(events(gw, "prediction"), before)
    assert d.pop("miss") == 1 and sum(d.values()) == 19  # the rest waited for it or hit its answer


def test_cache_stats_and_purge(gw: Gateway) -> None:
    url = f"{gw.url}/v1/models/iris/predict"
    httpx.post(url, json={"data": [[5.0, 3.0, 1.5, 0.2]]})
    stats = httpx.get(f"{gw.url}/cache").json()
    assert stats["prediction"]["entries"] >= 1 and stats["prediction"]["disabled_models"] == ["iris_setosa"]
    assert httpx.delete(f"{gw.url}/cache/prediction", params={"model": "iris"}).status_code == 200
    before = events(gw, "prediction")
    httpx.post(url, json={"data": [[5.0, 3.0, 1.5, 0.2]]})
    assert delta(events(gw, "prediction"), before) == {"miss": 1}


# -- data cache -------------------------------------------------------------------------
def test_register_in_three_forms_gives_one_id(gw: Gateway) -> None:
    want = hashlib.sha256(CAT).hexdigest()
    raw = httpx.post(f"{gw.url}/data", content=CAT, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 201 and raw.headers["location"] == f"/data/{want}"
    multipart = httpx.post(f"{gw.url}/data", files={"file": ("cat.jpg", CAT, "image/jpeg")})
    b64 = httpx.post(f"{gw.url}/data", json={"image_data": base64.b64encode(CAT).decode()})
    assert raw.json()["id"] == multipart.json()["id"] == b64.json()["id"] == want
    meta = httpx.get(f"{gw.url}/data/{want}").json()
    assert (meta["content_type"], meta["size"], meta["width"], meta["height"]) == (
        "image/jpeg",
        len(CAT),
        768,
        1024,
    )
    bad = httpx.post(f"{gw.url}/data", content=b"nope", headers={"content-type": "image/jpeg"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_image"


def test_second_prediction_on_an_item_skips_decode_and_preprocess(gw: Gateway) -> None:
    item = httpx.post(f"{gw.url}/data", content=ASTRONAUT, headers={"content-type": "image/png"}).json()["id"]
    url = f"{gw.url}/v1/models/face/predict/data/{item}"
    no_cache = {"cache-control": "no-cache"}  # bypass the prediction cache: measure the data cache alone
    before = events(gw, "data")
    miss = httpx.post(url, headers=no_cache).json()
    hit = httpx.post(url, headers=no_cache).json()
    assert (miss["cache"], hit["cache"]) == ({"data": "miss"}, {"data": "hit"})
    assert delta(events(gw, "data"), before) == {"miss": 1, "hit": 1}
    assert hit["results"] == miss["results"] and hit["results"][0]["boxes"]
    inline = httpx.post(
        f"{gw.url}/v1/models/face/predict", content=ASTRONAUT, headers={"content-type": "image/png"}
    )
    assert inline.json()["results"] == hit["results"]  # boxes in the image's pixels, from the cached geometry
    assert hit["timings_ms"]["preprocess"] < miss["timings_ms"]["preprocess"] / 5
    print(
        f"astronaut.png preprocess over HTTP: miss {miss['timings_ms']['preprocess']} ms, "
        f"hit {hit['timings_ms']['preprocess']} ms"
    )
    # the same item without no-cache: its answer is the one cached for the inline image (same bytes)
    cached = httpx.post(url).json()
    assert cached["cache"] == {"prediction": "hit"} and cached["results"] == hit["results"]


def test_data_cache_byte_bound_evicts_least_recently_used(gw: Gateway) -> None:
    ids = [
        httpx.post(f"{gw.url}/data", content=png(seed), headers={"content-type": "image/png"}).json()["id"]
        for seed in (11, 12, 13)
    ]
    before = events(gw, "data")
    for item in ids:
        r = httpx.post(f"{gw.url}/v1/models/face/predict/data/{item}", headers={"cache-control": "no-cache"})
        assert r.json()["cache"] == {"data": "miss"}
    assert delta(events(gw, "data"), before)["eviction"] >= 1
    cached = [bool(httpx.get(f"{gw.url}/data/{i}").json()["cached"]) for i in ids]
    assert cached == [False, True, True]
    assert httpx.get(f"{gw.url}/cache").json()["data"]["bytes"] <= 2 * FACE_TENSOR_BYTES + 1000


def test_deleted_item_is_gone(gw: Gateway) -> None:
    item = httpx.post(f"{gw.url}/data", content=png(99), headers={"content-type": "image/png"}).json()["id"]
    assert httpx.post(f"{gw.url}/v1/models/face/predict/data/{item}").status_code == 200
    assert httpx.delete(f"{gw.url}/data/{item}").status_code == 200
    assert httpx.get(f"{gw.url}/data/{item}").status_code == 404
    assert httpx.post(f"{gw.url}/v1/models/face/predict/data/{item}").status_code == 404
    assert httpx.post(f"{gw.url}/v1/models/iris/predict/data/{item}").status_code == 422  # not an image model


# -- version switch and restart ---------------------------------------------------------
def test_version_switch_never_returns_the_old_answer_and_restart_keeps_entries(tmp_path: Path) -> None:
    root = copy_models(tmp_path / "models", ["iris"])
    data = tmp_path / "data"
    url = "/v1/models/iris/predict"
    body = {"data": [ROW]}
    with run_gateway(root, data) as gw:
        v1 = httpx.post(gw.url + url, json=body).json()
        again = httpx.post(gw.url + url, json=body).json()
        assert again["results"] == v1["results"] and again["timings_ms"]["infer"] == 0.0
        add_book_iris_version(root)
        assert httpx.post(f"{gw.url}/v1/models/iris/versions/2/activate").status_code == 200
        v2 = httpx.post(gw.url + url, json=body).json()
        assert v2["version"] == "2" and v2["timings_ms"]["infer"] > 0
        probs1, probs2 = v1["results"][0]["probabilities"], v2["results"][0]["probabilities"]
        np.testing.assert_allclose(probs2, BOOK_IRIS[0]["probabilities"], atol=EXPECTED["atol"])
        assert np.abs(np.subtract(probs1, probs2)).max() > 1e-4
        answers = {"1": probs1, "2": probs2}

        async def switch_under_load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                load = [client.post(url, json=body) for _ in range(40)]
                flips = [
                    client.post("/v1/models/iris/rollback"),
                    client.post("/v1/models/iris/versions/2/activate"),
                ]
                done = await asyncio.gather(*load[:20], flips[0], *load[20:30], flips[1], *load[30:])
                return [r for r in done if r.request.url.path == url]

        for r in asyncio.run(switch_under_load()):
            doc = r.json()  # (a batch may sum in another order: a few ulp, far below the versions' gap)
            np.testing.assert_allclose(doc["results"][0]["probabilities"], answers[doc["version"]], atol=1e-5)
        assert httpx.post(gw.url + url, json=body).json()["version"] == "2"
    with run_gateway(root, data) as gw:  # a new process over the same files
        before = events(gw, "prediction")
        after_restart = httpx.post(gw.url + url, json=body).json()
        assert delta(events(gw, "prediction"), before) == {"hit": 1}
        assert after_restart["version"] == "2" and after_restart["results"] == v2["results"]
        assert after_restart["timings_ms"]["infer"] == 0.0
