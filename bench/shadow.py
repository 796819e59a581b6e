"""What shadow evaluation costs the caller: p50/p99 through the gateway with and without a staged
candidate of the face model, side by side in one run.

    python bench/shadow.py [--requests 300] [--rounds 3] [--sample 0.25] [--max-per-s 2] [--json out.json]

One real gateway (``edge-agent serve``, a process) serves face version 1; version 2 (the same
package, another version) is staged or not, alternating round by round (``off``, ``on``, ``off``,
``on``...), so both conditions see the same machine load. Each round sends ``--requests``
sequential requests (the astronaut sample PNG, prediction cache bypassed) and times them at the
caller. The table gives p50 and p99 per condition and their ratio (target: p50 within 5 %); the
shadow's own figures (samples, rate-limited, dropped, agreement) show how much it did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.package import read_manifest, write_manifest  # noqa: E402
from edge_agent.runtime.store import ModelStore  # noqa: E402
from tests.serving.gateway_proc import run_gateway  # noqa: E402

IMAGE = ROOT / "models" / "face" / "1" / "samples" / "astronaut.png"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_round(client: httpx.Client, url: str, image: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(
            url, content=image, headers={"content-type": "image/png", "Cache-Control": "no-cache"}
        )
        out.append((time.perf_counter() - t0) * 1000.0)
        if r.status_code != 200 or r.json()["version"] != "1":
            raise SystemExit(f"bench: unexpected answer {r.status_code}: {r.text[:200]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="requests per round (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per condition (default 3)")
    p.add_argument("--sample", type=float, default=0.25, help="[shadow] sample (default 0.25)")
    p.add_argument("--max-per-s", type=float, default=2.0, help="[shadow] max_per_s (default 2)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    try:
        model_dir, data_dir = work / "models", work / "data"
        shutil.copytree(ROOT / "models" / "face" / "1", model_dir / "face" / "1")
        staged = model_dir / "face" / "2"
        shutil.copytree(ROOT / "models" / "face" / "1", staged, ignore=shutil.ignore_patterns("samples"))
        write_manifest(staged, read_manifest(staged).model_copy(update={"version": "2"}))
        store = ModelStore(model_dir, data_dir / "store-state.json")
        store.set_active("face", "1")
        env = {"EDGE_SHADOW__SAMPLE": str(args.sample), "EDGE_SHADOW__MAX_PER_S": str(args.max_per_s)}
        image = IMAGE.read_bytes()
        times: dict[str, list[float]] = {"off": [], "on": []}
        with run_gateway(model_dir, data_dir, env=env) as gw, httpx.Client(timeout=30) as client:
            url = f"{gw.url}/v1/models/face/predict"
            one_round(client, url, image, 20)  # warm-up
            for _ in range(args.rounds):
                for condition in ("off", "on"):
                    store.set_staged("face", "2" if condition == "on" else None)
                    time.sleep(1.5)  # the gateway looks for staged versions every second
                    times[condition] += one_round(client, url, image, args.requests)
                    if condition == "on":
                        time.sleep(1.2)  # the figures of this round written
                        shadow = json.loads((data_dir / "shadow" / "face.json").read_text())
        figures: dict[str, Any] = {
            c: {"n": len(v), "p50_ms": statistics.median(v), "p99_ms": percentile(v, 99)}
            for c, v in times.items()
        }
        ratio50 = figures["on"]["p50_ms"] / figures["off"]["p50_ms"]
        ratio99 = figures["on"]["p99_ms"] / figures["off"]["p99_ms"]
        head = (
            f"caller latency through the gateway, face model, {args.rounds} x {args.requests} requests each"
        )
        print(head)
        print(f"{'condition':<28} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
        for label, c in (("no staged candidate", "off"), ("shadow candidate staged", "on")):
            f = figures[c]
            print(f"{label:<28} {f['n']:>6} {f['p50_ms']:>9.2f} {f['p99_ms']:>9.2f}")
        print(f"{'ratio (staged / none)':<28} {'':>6} {ratio50:>9.3f} {ratio99:>9.3f}")
        print(
            f"shadow (last round): samples {shadow['samples']}, rate-limited {shadow['rate_limited']}, "
            f"dropped {shadow['dropped']}, agreement {shadow['agreement']}, candidate p50 "
            f"{shadow['candidate_ms_p50']:.2f} ms (sample {args.sample}, max {args.max_per_s}/s)"
        )
        print(f"target p50 within 5 %: {'met' if ratio50 <= 1.05 else 'NOT met'}")
        if args.json:
            args.json.write_text(
                json.dumps(figures | {"ratio_p50": ratio50, "ratio_p99": ratio99, "shadow": shadow})
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
