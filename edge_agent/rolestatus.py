"""The supervisor's status document, ``<data_dir>/roles-status.json``: one definition for both ends.

``edge-agent up`` (:mod:`edge_agent.supervisor`) writes it atomically whenever a
role starts, exits or stops; the gateway's ``/health/all`` reads it when ``up``
runs on the same data directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_agent.runtime.store import atomic_write

STATUS_FILE = "roles-status.json"


def status_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATUS_FILE


def write_status(path: Path, doc: dict[str, Any]) -> None:
    """Atomically; OSError when the disk refuses."""
    atomic_write(path, json.dumps(doc, indent=1).encode())


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The supervisor's last status document, or None when `up` is not running here."""
    try:
        doc = json.loads(status_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
