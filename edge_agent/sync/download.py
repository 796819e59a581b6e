"""Resumable HTTP download of a model artifact (httpx, streaming, bounded).

The bytes go to a partial file that survives interruptions and restarts. A
later call sends ``Range: bytes=<have>-`` (with ``If-Range``: the artifact's
ETag, so a changed file is fetched whole instead of spliced) and appends the
206 answer; a 200 answer restarts from zero; a 416 answer means the partial
file already holds everything. Sizes are checked against ``max_bytes`` from the
headers and again while streaming. httpx and OS errors become
``DownloadError`` here, once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")

Progress = Callable[[int, int | None], None]  # (bytes on disk, total if known)


class DownloadError(EdgeAgentError):
    """The artifact could not be fetched (network, HTTP status, disk); worth retrying."""

    status = 502
    code = "download_failed"
    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None, **details: object) -> None:
        super().__init__(message, **details)
        if retryable is not None:
            self.retryable = retryable


class ArtifactTooLarge(DownloadError):
    code = "artifact_too_large"
    retryable = False


@dataclass(frozen=True, slots=True)
class Fetched:
    size: int
    resumed_from: int  # bytes already on disk when this call started (0: a fresh download)
    received: int  # bytes this call received


def fetch(
    client: httpx.Client,
    url: str,
    part: Path,
    *,
    max_bytes: int,
    etag: str | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """Download ``url`` into ``part``, resuming what is there; raise ``DownloadError`` if incomplete."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"artifact URL {url[:200]!r} is not http(s)", retryable=False)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and etag:
        headers["If-Range"] = etag
    try:
        with client.stream("GET", url, headers=headers) as response:
            return _receive(response, part, have, max_bytes, progress)
    except httpx.HTTPError as exc:
        raise DownloadError(f"download of {url} interrupted: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror}") from None


def _receive(
    response: httpx.Response, part: Path, have: int, max_bytes: int, progress: Progress | None
) -> Fetched:
    start = have
    if response.status_code == 416:
        match = _UNSATISFIED.match(response.headers.get("content-range", ""))
        if match and int(match.group(1)) == have:
            return Fetched(have, have, 0)  # the partial file is already complete
        part.unlink(missing_ok=True)
        raise DownloadError(f"partial download of {have} bytes is longer than the artifact; discarded")
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if not match or int(match.group(1)) != have:
            raise DownloadError(f"server answered range {have}- with {response.headers.get('content-range')}")
        total: int | None = int(match.group(3))
        mode = "ab"
    elif response.status_code == 200:
        start = have = 0
        length = response.headers.get("content-length", "")
        total = int(length) if length.isdigit() else None
        mode = "wb"
    else:
        raise DownloadError(
            f"HTTP {response.status_code} for {response.url}",
            retryable=response.status_code >= 500 or response.status_code == 429,
        )
    if total is not None and total > max_bytes:
        raise ArtifactTooLarge(f"artifact of {total} bytes is over the limit of {max_bytes}")
    if start:
        logger.info("resuming download of %s at byte %d of %s", response.url, start, total)
    with part.open(mode) as out:
        for chunk in response.iter_bytes():  # as it arrives: an interruption loses nothing received
            have += len(chunk)
            if have > max_bytes:
                raise ArtifactTooLarge(f"artifact is over the limit of {max_bytes} bytes")
            out.write(chunk)
            if progress is not None:
                progress(have, total)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and have != total:
        raise DownloadError(f"connection closed at {have} of {total} bytes")
    return Fetched(have, start, have - start)
