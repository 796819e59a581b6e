#!/usr/bin/env python3
"""Container health check: GET /health of an HTTP role on this host.

    edge-healthcheck            the gateway (EDGE_PORT, default 8000)
    edge-healthcheck 8010       the prep role, a model@NAME role, ... on that port

Exit 0 when the answer is 200, 1 otherwise (Docker's HEALTHCHECK contract). Standard
library only: it runs every 30 s on a Pi and must not import the agent.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def main(argv: list[str]) -> int:
    host = os.environ.get("EDGE_HOST", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = argv[1] if len(argv) > 1 else os.environ.get("EDGE_PORT", "8000")
    url = f"http://{host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            if resp.status == 200:
                return 0
            print(f"{url}: HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
