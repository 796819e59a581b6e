"""The table of inference backends. Adding a backend = one module + one row here.

Backend modules are imported lazily, so a process that never runs a TFLite
model never imports LiteRT (memory is the Pi's scarcest resource), and a
backend whose library is missing is reported as unavailable with the reason
while the others keep working.
"""

from __future__ import annotations

import importlib
from typing import cast

from edge_agent.errors import BackendUnavailable
from edge_agent.runtime.backends.base import Backend, BackendOptions, LoadedModel

BACKENDS: dict[str, str] = {
    "onnx": "edge_agent.runtime.backends.onnx",
    "litert": "edge_agent.runtime.backends.litert",
}

__all__ = ["BACKENDS", "Backend", "BackendOptions", "LoadedModel", "availability", "get_backend"]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; BackendUnavailable if it cannot run here."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    backend = cast(Backend, importlib.import_module(BACKENDS[name]).BACKEND)
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend {name} is unavailable: {reason}", backend=name)
    return backend


def availability() -> dict[str, str | None]:
    """Backend name -> None when usable, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            get_backend(name)
            out[name] = None
        except BackendUnavailable as exc:
            out[name] = exc.message
    return out
