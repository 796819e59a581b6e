"""Patterns benchmark (bench/patterns.py): the prediction cache, the data cache and the horizontal
microservice, over HTTP through the gateway."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np

# -- prediction cache and data cache ----------------------------------------------------------------
from bench.patterns_support import (
    CAT,
    IRIS_ROW,
    JPEG,
    OVR,
    TARGET_HIT_SPEEDUP,
    BenchError,
    Ctx,
    Http,
    Row,
    fms,
    fx,
    gateway,
    p50,
    ratio,
)


def target_cell(r: float) -> str:
    return f">= {TARGET_HIT_SPEEDUP:.0f}x: {'met' if r >= TARGET_HIT_SPEEDUP else '**missed**'}"


def bench_caches(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, client = ctx.cfg, Http(gateway(ctx).url)
    try:
        path = "/v1/models/face/predict"
        srv: dict[str, list[float]] = {"miss": [], "hit": []}
        cli: dict[str, list[float]] = {"miss": [], "hit": []}
        lookup: list[float] = []
        dig: dict[str, list[float]] = {"miss": [], "hit": []}  # by digest: GET first, upload on 404
        for i in range(cfg.warmup + cfg.cache_pairs):
            body = CAT + os.urandom(8)  # after the JPEG end marker: a new key, the same decode
            by_digest = f"/v1/models/face/predictions/{hashlib.sha256(body).hexdigest()}"
            absent, ask_ms = client.json("GET", by_digest, expect=(404,))
            if absent.get("code") != "prediction_not_cached":
                raise BenchError(f"expected a 404 prediction_not_cached, got {absent}")
            miss, miss_ms = client.json("POST", path, body, JPEG)
            hit, hit_ms = client.json("POST", path, body, JPEG)
            known, known_ms = client.json("GET", by_digest)
            if (miss["cache"].get("prediction"), hit["cache"].get("prediction")) != ("miss", "hit"):
                raise BenchError(f"expected a miss then a hit, got {miss['cache']} then {hit['cache']}")
            if hit["results"] != miss["results"] or known["results"] != miss["results"]:
                raise BenchError("the cached answer differs from the computed one")
            if known["cache"].get("prediction") != "hit":
                raise BenchError(f"expected a hit by digest, got {known['cache']}")
            if i < cfg.warmup:
                continue
            dig["miss"].append(ask_ms + miss_ms)
            dig["hit"].append(known_ms)
            srv["miss"].append(miss["timings_ms"]["total"])
            srv["hit"].append(hit["timings_ms"]["total"])
            cli["miss"].append(miss_ms)
            cli["hit"].append(hit_ms)
            lookup.append(hit["timings_ms"]["cache_lookup"])

        floor = [client.request("GET", "/health")[2] for _ in range(cfg.cache_pairs + cfg.warmup)]
        floor = floor[cfg.warmup :]  # the HTTP round trip of a request that does nothing

        item = hashlib.sha256(CAT).hexdigest()
        client.request("DELETE", f"/data/{item}")  # 404 when not registered: fine
        pre: dict[str, list[float]] = {"miss": [], "hit": []}
        tot: dict[str, list[float]] = {"miss": [], "hit": []}
        no_cache = {"cache-control": "no-cache"}
        for i in range(cfg.data_rounds):
            if i:
                client.json("DELETE", f"/data/{item}")
            reg, _ = client.json("POST", "/data", CAT, JPEG, expect=(201,))
            if reg["id"] != item:
                raise BenchError(f"data item id {reg['id']} is not the sha256 of the bytes")
            for k in range(1 + cfg.data_hits):
                doc, ms = client.json("POST", f"/v1/models/face/predict/data/{item}", b"", no_cache)
                kind = "miss" if k == 0 else "hit"
                if doc["cache"].get("data") != kind or "prediction" in doc["cache"]:
                    raise BenchError(
                        f"expected data cache {kind} without the prediction cache: {doc['cache']}"
                    )
                pre[kind].append(doc["timings_ms"]["preprocess"])
                tot[kind].append(ms)
    finally:
        client.close()

    r_srv = ratio(p50(srv["miss"]), p50(srv["hit"]))
    r_cli = ratio(p50(cli["miss"]), p50(cli["hit"]))
    r_dig = ratio(p50(dig["miss"]), p50(dig["hit"]))
    r_pre = ratio(p50(pre["miss"]), p50(pre["hit"]))
    r_tot = ratio(p50(tot["miss"]), p50(tot["hit"]))
    n, m = len(srv["hit"]), len(pre["miss"])
    rows = [
        Row(
            "prediction cache",
            f"face, cat.jpg {len(CAT) // 1000} kB: server `timings_ms.total` (p50 of {n} pairs)",
            f"hit {fms(p50(srv['hit']))}",
            f"miss {fms(p50(srv['miss']))}",
            fx(r_srv),
            target_cell(r_srv),
        ),
        Row(
            "prediction cache",
            f"face, cat.jpg: client HTTP latency, keep-alive (p50 of {n} pairs)",
            f"hit {fms(p50(cli['hit']))} (bare GET /health {fms(p50(floor))})",
            f"miss {fms(p50(cli['miss']))}",
            fx(r_cli),
            target_cell(r_cli),
        ),
        Row(
            "prediction cache",
            f"face, cat.jpg by digest: client `GET /v1/models/face/predictions/{{sha256}}` (p50 of {n}); "
            "a miss is that 404 + the upload",
            f"hit {fms(p50(dig['hit']))}",
            f"miss {fms(p50(dig['miss']))}",
            fx(r_dig),
            target_cell(r_dig),
        ),
        Row(
            "data cache",
            f"cat.jpg for face by id, no-cache: `timings_ms.preprocess` ({m} misses, {len(pre['hit'])} hits)",
            f"hit {fms(p50(pre['hit']))}",
            f"miss {fms(p50(pre['miss']))}",
            fx(r_pre),
        ),
        Row(
            "data cache",
            "same requests: client HTTP latency",
            f"hit {fms(p50(tot['hit']))}",
            f"miss {fms(p50(tot['miss']))}",
            fx(r_tot),
        ),
    ]
    data = {
        "prediction": {
            "server_ms": srv,
            "client_ms": cli,
            "hit_cache_lookup_ms": lookup,
            "client_by_digest_ms": dig,
            "get_health_ms": floor,
        },
        "data": {"preprocess_ms": pre, "client_ms": tot},
        "ratios": {
            "server": r_srv,
            "client": r_cli,
            "client_by_digest": r_dig,
            "data_preprocess": r_pre,
            "data_client": r_tot,
        },
    }
    return rows, data


# -- microservice ---------------------------------------------------------------------------------
def bench_microservice(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, client = ctx.cfg, Http(gateway(ctx).url)
    x = {"float_input": np.asarray([IRIS_ROW], np.float32)}
    body = json.dumps({"data": [IRIS_ROW]}).encode()
    headers = {"content-type": "application/json"}
    fan_cli, fan_srv, local = [], [], []
    try:
        for i in range(cfg.warmup + cfg.micro_requests):  # HTTP and in-process alternate: same noise
            doc, ms = client.json("POST", "/microservice/iris", body, headers)
            if doc["unavailable"]:
                raise BenchError(f"services unavailable: {doc['services']}")
            t0 = time.perf_counter()
            scores = {n: ctx.engine.predict(n, x).results[0]["probabilities"][0] for n in OVR}
            local_ms = (time.perf_counter() - t0) * 1000.0
            if i < cfg.warmup:
                got = sorted(doc["results"][0]["scores"].values())
                if not np.allclose(got, sorted(scores.values()), atol=1e-5):
                    raise BenchError(f"fan-out scores {got} differ from in-process {scores}")
                continue
            fan_cli.append(ms)
            fan_srv.append(doc["timings_ms"]["total"])
            local.append(local_ms)
    finally:
        client.close()
    r = ratio(p50(fan_cli), p50(local))
    rows = [
        Row(
            "microservice",
            f"POST /microservice/iris, 1 row, 3 model@NAME in parallel (p50 of {len(fan_cli)})",
            f"{fms(p50(fan_cli))} (server {fms(p50(fan_srv))})",
            f"in-process 3x `Engine.predict` {fms(p50(local))}",
            fx(r),
        )
    ]
    return rows, {"fanout_client_ms": fan_cli, "fanout_server_ms": fan_srv, "in_process_ms": local}
