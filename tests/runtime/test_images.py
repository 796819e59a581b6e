"""Image decoding and preprocessing: formats, limits, EXIF, resize geometry."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.errors import ImageDecodeError
from edge_agent.runtime.imageio import decode, sniff
from edge_agent.runtime.package import ImagePreprocess, Resize
from edge_agent.runtime.preprocess import transform

CAT = Path(__file__).resolve().parents[1] / "data" / "cat.jpg"


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_formats_decode_to_same_pixels() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for ext in (".png", ".bmp"):
        out, info = decode(encode(img, ext))
        assert (info.width, info.height) == (30, 20)
        np.testing.assert_array_equal(out, img)
    out, info = decode(encode(img, ".jpg"))
    assert info.format == "jpeg" and out.shape == img.shape


def test_decompression_bomb_refused_from_header() -> None:
    with pytest.raises(ImageDecodeError, match=r"30000x30000 = 900000000 pixels, over the limit"):
        decode(png_header_only(30000, 30000))


def test_truncated_jpeg_refused() -> None:
    data = CAT.read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(data[: len(data) // 2])


def test_text_file_is_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match="not an image: expected JPEG, PNG or BMP"):
        decode(b"hello, I am a text file named cat.jpg\n")
    with pytest.raises(ImageDecodeError, match="empty image"):
        decode(b"")


def test_corrupt_png_body_refused() -> None:
    data = bytearray(encode(np.full((40, 40, 3), 7, np.uint8), ".png"))
    data[40:60] = b"\xff" * 20  # garbage inside IDAT, header and IEND intact
    with pytest.raises(ImageDecodeError):
        decode(bytes(data))


def test_exif_orientation_is_honoured() -> None:
    data = bytearray(CAT.read_bytes())
    upright, _ = decode(bytes(data))
    assert upright.shape[:2] == (1024, 768)
    # cat.jpg carries orientation 1 (tag 0x0112 at byte 64, value at byte 73);
    # 6 means "rotate 90 degrees clockwise to display"
    assert data[64:66] == b"\x01\x12" and data[73] == 1
    data[73] = 6
    rotated, info = decode(bytes(data))
    assert rotated.shape[:2] == (768, 1024)
    np.testing.assert_array_equal(rotated, cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE))
    assert (info.width, info.height) == (768, 1024)  # header size is before rotation


def test_letterbox_geometry_maps_back_to_image_pixels() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255  # a white square centred at (100, 50)
    spec = ImagePreprocess(
        input="x", color="rgb", resize=Resize(width=64, height=64, mode="letterbox"), scale=1 / 255
    )
    x, geo = transform(img, spec)
    assert x.shape == (64, 64, 3)
    ys, xs = np.nonzero(x[:, :, 0] > 0.5)
    cx, cy = geo.to_image(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
    assert abs(cx - 100) < 2 and abs(cy - 50) < 2  # within a model pixel (200/64 ~ 3 image px)
    assert x[:10].max() == 0  # padding rows above the image are black


def test_center_crop_and_nchw_gray() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = 255  # left quarter white: cropped away by a centre crop
    spec = ImagePreprocess(
        input="x",
        color="gray",
        resize=Resize(width=10, height=10, mode="center_crop"),
        layout="NCHW",
        invert=True,
    )
    x, geo = transform(img, spec)
    assert x.shape == (1, 10, 10)
    np.testing.assert_allclose(x, 1.0)  # all black after the crop, inverted
    assert geo.to_image(0, 0) == (50.0, 0.0)


def test_sniff_reads_size_without_decoding() -> None:
    info = sniff(CAT.read_bytes())
    assert (info.format, info.width, info.height) == ("jpeg", 768, 1024)
