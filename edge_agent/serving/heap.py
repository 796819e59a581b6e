"""The gateway's garbage-collector settings, applied once its models are loaded.

A JSON tensor is parsed into nested lists, which the cyclic collector tracks; under load dozens of
requests hold theirs at once, so with CPython's default thresholds (700, 10, 10) the collector runs
every few requests, walks those live lists, moves them to older generations and every few hundred
requests walks the whole heap (every module, FastAPI's and pydantic's objects, the models'
metadata). Measured in-process (64 concurrent requests on the app, 3.11): on the tiny int8 model
the full collections alone cost ~32 us per request, all collections ~43 us, against ~90 us for the
rest of the request; on the heavy CNN's 33 kB JSON bodies ~50-100 us per request.

``settle`` collects once, then freezes what is alive (the code and the loaded models: never
garbage, never walked again) and raises the first generation's threshold so that the lists of
requests in flight are freed by their reference counts before a collection looks at them. Cyclic
garbage is still collected, only less often (a threshold of 10,000 objects: kilobytes).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GEN0_THRESHOLD:  # 0: collection switched off by the embedding process; left so
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
