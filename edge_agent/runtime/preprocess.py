"""Image -> model input tensor, as the manifest's ``preprocessing`` says.

Returns the tensor and a ``Geometry`` that maps model-input coordinates back
to the original image, so detections come back in the caller's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.runtime.imageio import DEFAULT_MAX_PIXELS, decode
from edge_agent.runtime.package import ImagePreprocess


@dataclass(frozen=True, slots=True)
class Geometry:
    """orig_x = (model_x - pad_x) / scale_x + crop_x (likewise for y)."""

    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    crop_x: float = 0.0
    crop_y: float = 0.0

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        ox = (x - self.pad_x) / self.scale_x + self.crop_x
        oy = (y - self.pad_y) / self.scale_y + self.crop_y
        return min(max(ox, 0.0), float(self.width)), min(max(oy, 0.0), float(self.height))


def _interp(name: str) -> int:
    import cv2

    return {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}[name]


def transform(img: np.ndarray, spec: ImagePreprocess) -> tuple[np.ndarray, Geometry]:
    """A decoded BGR uint8 image -> one sample (no batch dim) and its geometry."""
    import cv2

    if spec.color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif spec.color == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = img.shape[:2]
    tw, th = spec.resize.width, spec.resize.height
    inter = _interp(spec.resize.interpolation)
    mode = spec.resize.mode
    if mode == "stretch":
        out = cv2.resize(img, (tw, th), interpolation=inter)
        geo = Geometry(w, h, tw / w, th / h)
    elif mode == "letterbox":
        s = min(tw / w, th / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        resized = cv2.resize(img, (nw, nh), interpolation=inter)
        px, py = (tw - nw) // 2, (th - nh) // 2
        out = np.zeros((th, tw, *img.shape[2:]), dtype=img.dtype)
        out[py : py + nh, px : px + nw] = resized
        geo = Geometry(w, h, nw / w, nh / h, pad_x=px, pad_y=py)
    else:  # center_crop: scale so the image covers the target, cut the middle
        s = max(tw / w, th / h)
        cw, ch = min(w, round(tw / s)), min(h, round(th / s))
        cx, cy = (w - cw) // 2, (h - ch) // 2
        out = cv2.resize(img[cy : cy + ch, cx : cx + cw], (tw, th), interpolation=inter)
        geo = Geometry(w, h, tw / cw, th / ch, crop_x=cx, crop_y=cy)
    x: np.ndarray = out.astype(np.float32)
    if spec.invert:
        x = np.float32(255.0) - x
    x = x * np.float32(spec.scale) + np.float32(spec.offset)
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, dtype=np.float32)
    if spec.std is not None:
        x = x / np.asarray(spec.std, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if spec.layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x, dtype=np.float32), geo


def preprocess(
    data: bytes, spec: ImagePreprocess, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, Geometry]:
    img, _ = decode(data, max_pixels)
    return transform(img, spec)
