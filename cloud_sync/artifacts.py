"""Where model archives live: ``artifacts/`` beside the database, one ``<sha256>.tar`` each.

Defined once for everyone who touches them: publishing writes them
(:mod:`cloud_sync.deploy`), signing reads their sizes (:mod:`cloud_sync.trust`),
the API and the CLI serve and name them.
"""

from __future__ import annotations

from pathlib import Path

from cloud_sync.config import CloudConfig

ARTIFACT_SUFFIX = ".tar"


def artifact_dir(config: CloudConfig) -> Path:
    """Where archives live: ``artifacts/`` beside the database (one place for the CLI and the API)."""
    return config.db_path.parent / "artifacts"


def artifact_path(directory: Path, sha256: str) -> Path:
    return directory / f"{sha256}{ARTIFACT_SUFFIX}"
