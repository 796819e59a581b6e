"""Frame sources for the camera role: a V4L2 device, an RTSP/HTTP stream or a video file.

Everything goes through OpenCV's ``VideoCapture``. A reader thread owns the
capture and publishes frames into a one-slot mailbox: a frame that arrives
before the consumer took the previous one replaces it, and the replaced frame
is counted as dropped. Inference therefore always works on the newest frame.

* live sources (device, stream) arrive in real time; a stream that fails is
  re-opened with exponential backoff;
* a file is played at its own frame rate by default (``realtime=True``), so it
  drops frames exactly as a camera would; ``realtime=False`` hands over every
  frame (the reader waits for the consumer), for replaying footage or measuring
  throughput. At its end the file stops, or starts again with ``loop=True``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edge_agent.errors import EdgeAgentError

# OpenCV prints its own warnings for a source it cannot open; our error says it better.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

logger = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
DEFAULT_FILE_FPS = 30.0
SourceKind = Literal["device", "stream", "file"]


class FrameSourceError(EdgeAgentError):
    """A frame source cannot be opened or failed for good."""

    status = 503
    code = "camera_source"


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    target: int | str  # device index, device path, URL or file path
    text: str  # as configured, credentials masked: safe to log and store

    @property
    def live(self) -> bool:
        return self.kind != "file"


def redact(source: str) -> str:
    """``rtsp://user:pw@cam/x`` -> ``rtsp://***@cam/x``: never log a camera's password."""
    parts = urlsplit(source)
    if "@" not in parts.netloc:
        return source
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def parse_source(source: str) -> Source:
    """Classify ``source``: ``0`` or ``/dev/video0``, a URL, or a file path."""
    text = source.strip()
    if not text:
        raise FrameSourceError("camera source is empty")
    if text.isdigit():
        return Source("device", int(text), text)
    if text.startswith("/dev/"):
        return Source("device", text, text)
    scheme = urlsplit(text).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return Source("stream", text, redact(text))
    if scheme == "file":
        text = urlsplit(text).path
    return Source("file", text, text)


def open_capture(source: Source) -> Any:
    """An opened ``cv2.VideoCapture``; FrameSourceError with the reason if it cannot open."""
    import cv2

    if source.kind == "file" and not Path(str(source.target)).is_file():
        raise FrameSourceError(f"camera source {source.text!r}: no such video file", source=source.text)
    if source.kind == "device" and isinstance(source.target, str) and not Path(source.target).exists():
        raise FrameSourceError(f"camera source {source.text!r}: no such device", source=source.text)
    if source.kind == "device":
        cap = cv2.VideoCapture(source.target, cv2.CAP_V4L2)
    else:
        if source.kind == "stream" and source.text.lower().startswith("rtsp"):
            # TCP: no smeared frames from lost UDP packets on a Wi-Fi link
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            READ_TIMEOUT_MS,
        ]
        cap = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        what = {"device": "V4L2 device", "stream": "stream", "file": "video file"}[source.kind]
        raise FrameSourceError(
            f"camera source {source.text!r}: cannot open the {what} (OpenCV VideoCapture failed)",
            source=source.text,
        )
    if source.kind == "device":
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer frames queued in the driver: less latency
    return cap


@dataclass(frozen=True, slots=True)
class Frame:
    index: int  # frames read from the source before this one (a file restarts at 0 each pass)
    cycle: int  # pass over a looped file (0 for the first pass and for live sources)
    captured: float  # wall-clock time it was read (time.time())
    position_ms: float | None  # position in a video file
    image: np.ndarray  # BGR uint8


@dataclass(slots=True)
class ReaderStats:
    read: int = 0  # frames decoded
    dropped: int = 0  # frames replaced by a newer one before inference took them
    reconnects: int = 0
    cycles: int = 0  # completed passes over a file (loop)


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2.0 ** min(attempt, 16))


@dataclass(slots=True)
class _Mailbox:
    frame: Frame | None = None
    finished: bool = False
    error: EdgeAgentError | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)


class FrameReader:
    """Reads ``source`` on its own thread; ``next_frame()`` gives the newest unseen frame."""

    def __init__(
        self, source: Source, *, realtime: bool = True, loop: bool = False, backoff: Backoff | None = None
    ) -> None:
        self.source = source
        self.realtime = realtime or source.live
        self.loop = loop and not source.live
        self.backoff = backoff or Backoff()
        self.stats = ReaderStats()
        self.source_fps: float | None = None
        self.connected = False  # False while a lost live source is being re-opened
        self._box = _Mailbox()
        self._stop = threading.Event()
        self._cap: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> FrameReader:
        """Open the source (FrameSourceError if it cannot be) and start reading."""
        self._cap = open_capture(self.source)
        self.source_fps = self._fps(self._cap)
        self.connected = True
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()
        return self

    def next_frame(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        box = self._box
        with box.cond:
            box.cond.wait_for(lambda: box.frame is not None or box.finished, timeout)
            frame, box.frame = box.frame, None
            box.cond.notify_all()  # a reader waiting for a free slot (realtime=False)
            if frame is None and box.error is not None:
                raise box.error
            return frame

    @property
    def finished(self) -> bool:
        """True once the source ended (or failed) and every frame was taken."""
        with self._box.cond:
            return self._box.finished and self._box.frame is None

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._box.cond:
            self._box.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)  # a daemon: a capture stuck in a read cannot hold the exit

    # -- the reader thread ----------------------------------------------------------
    @staticmethod
    def _fps(cap: Any) -> float | None:
        import cv2

        fps = float(cap.get(cv2.CAP_PROP_FPS))
        return fps if math.isfinite(fps) and 0 < fps <= 1000 else None

    def _run(self) -> None:
        try:
            self._read_loop()
        except EdgeAgentError as exc:
            self._box.error = exc
        except Exception as exc:  # OpenCV or anything else: report, never die silently
            logger.exception("frame reader failed")
            self._box.error = FrameSourceError(f"frame reader failed: {exc}", source=self.source.text)
        finally:
            if self._cap is not None:
                self._cap.release()
            with self._box.cond:
                self._box.finished = True
                self._box.cond.notify_all()

    def _read_loop(self) -> None:
        import cv2

        interval = 1.0 / (self.source_fps or DEFAULT_FILE_FPS)
        if not self.source.live and self.realtime and self.source_fps is None:
            logger.warning(
                "%s has no usable frame rate; playing it at %g fps", self.source.text, 1 / interval
            )
        index, t0 = 0, time.monotonic()
        while not self._stop.is_set():
            ok, image = self._cap.read()
            if not ok:
                if self.source.live:
                    self._reconnect()
                    continue
                self.stats.cycles += 1
                if not self.loop or index == 0:
                    return
                self._cap.release()  # re-open rather than seek: seeking is unreliable for some codecs
                self._cap = open_capture(self.source)
                index, t0 = 0, time.monotonic()
                continue
            if not self.source.live and self.realtime:
                # play the file at its own rate; a reader behind schedule does not wait
                self._stop.wait(max(0.0, t0 + index * interval - time.monotonic()))
            position = None if self.source.live else float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
            self._publish(Frame(index, self.stats.cycles, time.time(), position, image))
            index += 1

    def _publish(self, frame: Frame) -> None:
        box = self._box
        with box.cond:
            if not self.realtime:  # hand over every frame: wait for the slot to be free
                box.cond.wait_for(lambda: box.frame is None or self._stop.is_set())
            if box.frame is not None:
                self.stats.dropped += 1
            box.frame = frame
            self.stats.read += 1
            box.cond.notify_all()

    def _reconnect(self) -> None:
        self.connected = False
        self._cap.release()
        attempt = 0
        while not self._stop.is_set():
            delay = self.backoff.delay(attempt)
            logger.warning("camera source %s lost; reconnecting in %.1f s", self.source.text, delay)
            if self._stop.wait(delay):
                return
            try:
                self._cap = open_capture(self.source)
            except FrameSourceError as exc:
                logger.warning("%s", exc.message)
                attempt += 1
                continue
            self.stats.reconnects += 1
            self.connected = True
            logger.info("camera source %s reconnected", self.source.text)
            return
