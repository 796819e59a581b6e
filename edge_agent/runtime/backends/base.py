"""The contract every inference backend implements.

A backend module exposes one ``Backend`` object; loading a model file gives a
``LoadedModel``. Lifecycle: ``load`` (initialize) -> ``infer`` (execute, any
number of times, from any thread) -> ``close`` (finalize). Backends see
tensors only: decoding, validation and post-processing live in the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.runtime.package import Manifest


@dataclass(frozen=True, slots=True)
class BackendOptions:
    intra_op_threads: int = 1
    inter_op_threads: int = 1


class LoadedModel(Protocol):
    manifest: Manifest

    @property
    def ready(self) -> bool: ...

    @property
    def max_batch(self) -> int | None:
        """Largest batch one runtime call takes, None when unbounded."""
        ...

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are already validated and of the manifest's dtypes."""
        ...

    def metadata(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when the runtime library imports and works here, else why not."""
        ...

    def version(self) -> str: ...

    def load(self, path: Path, manifest: Manifest, options: BackendOptions) -> LoadedModel: ...
