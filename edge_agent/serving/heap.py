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

``hold_until_answered`` moves the freeing of a request's parsed JSON (a heavy CNN's 3,072 floats in
~100 nested lists: ~27 us of reference-count teardown, measured between the handler's last line and
its return) from before the answer is written to after it: the fast path (``FastPath.serve``) keeps
what a handler gives it until ``send`` has written the answer, then empties that list at once, so a
client waiting at c=1 does not wait for the teardown (emptied explicitly: the server's keep-alive
timer, armed while the answer is sent, copies the request's context, which would otherwise keep the
list until the next request on the connection and free it on that request's path). Outside the
fast path, and for bodies under ``fastpath.HOLD_MIN_BYTES`` (16 kB: cheaper to free than to hold),
it is a no-op (the object goes when its last user does).
"""

from __future__ import annotations

import gc
from contextvars import ContextVar, Token

GEN0_THRESHOLD = 10_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GEN0_THRESHOLD:  # 0: collection switched off by the embedding process; left so
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


_HELD: ContextVar[list[object] | None] = ContextVar("edge_held_until_answered", default=None)


def hold_until_answered(obj: object) -> None:
    """Keep ``obj`` alive until this request's answer is written (fast path only; else nothing)."""
    held = _HELD.get()
    if held is not None:
        held.append(obj)


def holding(held: list[object]) -> Token[list[object] | None]:
    """Make ``held`` this request's list (``hold_until_answered`` appends to it); the token is for
    ``release``."""
    return _HELD.set(held)


def release(token: Token[list[object] | None]) -> None:
    """Stop collecting into the list of ``holding`` (its objects go with the caller's last reference)."""
    _HELD.reset(token)
