"""Safe image decoding: sniff the format, check the size from the header
before decoding a single pixel, refuse truncated files, honour EXIF
orientation. Supports JPEG, PNG and BMP.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import ImageDecodeError

# OpenCV's own guard, a second line of defence behind the header check.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 26))

DEFAULT_MAX_PIXELS = 40_000_000  # a 12 MP Pi camera still is 12.3 M


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageDecodeError("JPEG is corrupt: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    raise ImageDecodeError("JPEG is truncated or corrupt: no frame header found")


def sniff(data: bytes) -> ImageInfo:
    """Format and size from the header alone; ImageDecodeError if not an image."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("PNG is truncated: no IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return ImageInfo("png", w, h)
    if data[:3] == b"\xff\xd8\xff":
        w, h = _jpeg_size(data)
        return ImageInfo("jpeg", w, h)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return ImageInfo("bmp", abs(w), abs(h))
    raise ImageDecodeError("not an image: expected JPEG, PNG or BMP data")


def _complete(data: bytes, info: ImageInfo) -> bool:
    if info.format == "png":
        return b"IEND" in data[-64:]
    if info.format == "jpeg":
        return b"\xff\xd9" in data[-1024:]
    return True


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Decode to a BGR uint8 array (EXIF orientation applied)."""
    import cv2  # imported here: roles that never see an image never load OpenCV

    if not data:
        raise ImageDecodeError("empty image")
    info = sniff(data)
    if info.width <= 0 or info.height <= 0:
        raise ImageDecodeError(f"{info.format.upper()} header gives an empty size {info.width}x{info.height}")
    if info.width * info.height > max_pixels:
        raise ImageDecodeError(
            f"image is {info.width}x{info.height} = {info.width * info.height} pixels, "
            f"over the limit of {max_pixels}; resize it before sending",
            width=info.width,
            height=info.height,
        )
    if not _complete(data, info):
        raise ImageDecodeError(f"{info.format.upper()} is truncated: the end-of-image marker is missing")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{info.format.upper()} cannot be decoded: {exc}") from None
    if img is None:
        raise ImageDecodeError(f"{info.format.upper()} data is corrupt and cannot be decoded")
    return img, info
