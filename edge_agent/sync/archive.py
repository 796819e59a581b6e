"""The model package archive: the ONE definition of how a package travels.

A package archive is a plain (uncompressed) POSIX tar of the package's flat
files: ``manifest.json``, the model file and the golden sample, nothing else.
Packing is deterministic (sorted names, mtime 0, owner 0, mode 0644), so the
same package always gives the same bytes and the same sha256.

Unpacking trusts nothing: every member must be a regular file with a plain
name (no directory part, no ``..``, no absolute path, no leading dot), at most
``max_files`` of them, no name twice, and the sizes must stay under
``max_bytes``, counted while copying (not taken from the header). Links,
devices and directories are refused. Only then does the caller compare the
unpacked manifest with the signed one and check every file's sha256.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import IO, BinaryIO

from edge_agent.errors import PackageError
from edge_agent.runtime.package import MANIFEST_NAME, read_manifest, verify_files

MAX_FILES = 16
CHUNK = 1 << 20


class ArchiveError(PackageError):
    """A package archive that is malformed or unsafe to unpack."""

    code = "archive_unsafe"


DRIFT_REFERENCE = "drift.json"  # edge_agent.runtime.drift.REFERENCE_FILE (numpy-free here)


def package_files(package_dir: Path) -> list[str]:
    """The files a package archive holds: the manifest, the model, the golden sample and, when the
    package has one, its drift reference (``drift.json``; the archive's sha256 is signed)."""
    m = read_manifest(package_dir)
    verify_files(package_dir, m)
    extra = {DRIFT_REFERENCE} if (package_dir / DRIFT_REFERENCE).is_file() else set()
    return sorted({MANIFEST_NAME, m.file, m.golden.file} | extra)


def pack(package_dir: Path, out: BinaryIO) -> list[str]:
    """Write the archive of a verified package to ``out``; returns the member names."""
    names = package_files(package_dir)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = package_dir / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return names


def _check_name(name: str) -> None:
    plain = name and "/" not in name and "\\" not in name and "\0" not in name
    if not plain or name.startswith(".") or len(name) > 255:
        raise ArchiveError(f"archive member {name[:80]!r} is not a plain file name; refused")


def unpack(archive: Path, dest: Path, *, max_bytes: int, max_files: int = MAX_FILES) -> list[str]:
    """Extract a package archive into the empty or new directory ``dest``; returns the names."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArchiveError(f"{dest} is not empty")
    names: list[str] = []
    total = 0
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                _check_name(member.name)
                if not member.isreg():
                    raise ArchiveError(f"archive member {member.name!r} is not a regular file; refused")
                if member.name in names:
                    raise ArchiveError(f"archive member {member.name!r} appears twice; refused")
                if len(names) >= max_files:
                    raise ArchiveError(f"archive holds more than {max_files} files; refused")
                if total + member.size > max_bytes:
                    raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes; refused")
                source = tar.extractfile(member)
                if source is None:
                    raise ArchiveError(f"archive member {member.name!r} has no data")
                total += _copy(source, dest / member.name, max_bytes - total)
                names.append(member.name)
    except tarfile.TarError as exc:
        raise ArchiveError(f"not a valid package archive: {exc}") from None
    if MANIFEST_NAME not in names:
        raise ArchiveError(f"archive holds no {MANIFEST_NAME}")
    return names


def _copy(source: IO[bytes], path: Path, budget: int) -> int:
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise ArchiveError("archive unpacks to more bytes than its headers say; refused")
            out.write(chunk)
    return written
