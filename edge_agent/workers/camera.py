"""``edge-agent camera``: the edge-AI pattern.

Frames come from a V4L2 device, an RTSP/HTTP stream or a video file
(:mod:`edge_agent.workers.frames`, newest frame only). Inference is throttled
to ``camera.fps`` at most; each inferred frame runs the configured model on
the decoded frame (no re-encoding) and its result is recorded together with
its outbox entry in one transaction. Progress goes to ``camera-status.json``
in the data directory, rewritten atomically about once a second: the role has
no HTTP server, and a file is what ``bench/`` and an operator can read.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import os
import resource
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError, EdgeAgentError, InvalidInput
from edge_agent.runtime.backends import LoadedModel
from edge_agent.runtime.engine import Engine
from edge_agent.storage import DiskFull, Storage, is_disk_full
from edge_agent.workers.frames import Frame, FrameReader, parse_source

logger = logging.getLogger(__name__)

STATUS_FILE = "camera-status.json"
THUMBNAIL_WIDTH = 160
THUMBNAIL_QUALITY = 70
MAX_CONSECUTIVE_ERRORS = 10
FPS_WINDOW_S = 5.0
MAX_PENDING = 256  # results buffered at most before they are recorded


class CameraError(EdgeAgentError):
    """The camera loop cannot go on (the model fails on every frame)."""

    code = "camera_failed"


@dataclass(frozen=True, slots=True)
class CameraOptions:
    source: str
    model: str = "face"
    fps: float | None = 2.0  # inferred frames per second at most; None: as fast as possible
    thumbnails: bool = False
    loop: bool = False
    realtime: bool = True  # play a file at its own frame rate (False: every frame, no drops)
    max_frames: int | None = None
    status_interval_s: float = 1.0
    labels: tuple[str, ...] = ()  # keep only boxes with these labels; () = all
    min_score: float = 0.0  # keep only boxes scoring at least this
    only_detections: bool = False  # record a frame only when a box is left
    commit_interval_s: float = 0.0  # results buffered this long and recorded in one transaction

    @classmethod
    def from_config(cls, config: AgentConfig, args: argparse.Namespace) -> CameraOptions:
        cam = config.camera
        source = args.source if args.source is not None else cam.source
        problems = []
        if not source:
            problems.append("camera.source: not set; set EDGE_CAMERA__SOURCE or pass --source")
        if args.max_frames is not None and args.max_frames < 1:
            problems.append(f"--max-frames: must be at least 1 (got {args.max_frames})")
        if problems:
            raise ConfigError(problems)
        # camera.realtime is a requested config field; until it exists a file plays in real time
        realtime = bool(cam.realtime)
        return cls(
            str(source),
            cam.model,
            cam.fps,
            cam.thumbnails,
            cam.loop,
            realtime,
            args.max_frames,
            labels=tuple(cam.labels),
            min_score=cam.min_score,
            only_detections=cam.only_detections,
            commit_interval_s=cam.commit_interval_s,
        )

    @property
    def filters(self) -> bool:
        return bool(self.labels) or self.min_score > 0.0 or self.only_detections


def thumbnail(image: Any, width: int = THUMBNAIL_WIDTH) -> dict[str, Any]:
    """A small JPEG of a BGR frame, base64 in a JSON-ready dict."""
    import cv2

    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    if not ok:
        raise CameraError("cannot encode a thumbnail")
    th, tw = image.shape[:2]
    return {"format": "jpeg", "width": tw, "height": th, "data": base64.b64encode(data.tobytes()).decode()}


@dataclass(slots=True)
class CameraStats:
    inferred: int = 0
    failed: int = 0  # frames whose inference or recording failed
    failed_in_row: int = 0
    skipped: int = 0  # inferred frames not recorded: no box left after the filters
    unrecorded: int = 0  # frames inferred but not recorded: the disk was full
    recorded: int = 0  # frames whose result is in the database
    last_result_id: str | None = None
    last_frame: int | None = None
    first_at: float | None = None  # monotonic time the first inferred frame was taken
    last_at: float | None = None  # monotonic time the last inferred frame was taken
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("infer", "record", "age"), 0.0))
    recent: collections.deque[float] = field(default_factory=collections.deque)

    def fps(self, now: float) -> float:
        while self.recent and self.recent[0] < now - FPS_WINDOW_S:
            self.recent.popleft()
        span = min(FPS_WINDOW_S, now - (self.first_at or now))
        return len(self.recent) / span if span > 0 else 0.0

    def fps_avg(self) -> float:
        """Inferred frames per second between the first and the last inferred frame."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.inferred - 1) / (self.last_at - self.first_at)


class CameraLoop:
    """Take the newest frame, infer, record; at most ``options.fps`` times a second."""

    def __init__(self, engine: Engine, storage: Storage, options: CameraOptions, status_path: Path) -> None:
        self.engine = engine
        self.storage = storage
        self.options = options
        self.status_path = status_path
        self.source = parse_source(options.source)
        self.model: LoadedModel = engine.model(options.model)  # loads and self-tests
        spec = self.model.manifest.preprocessing
        if spec is None:
            raise InvalidInput(f"model {options.model!r} takes tensors, not images: it cannot run on frames")
        self.spec = spec
        self._check_filters()
        self.run_id = uuid.uuid4().hex
        self.stats = CameraStats()
        self.state = "starting"
        self.started = time.time()
        self.reader = FrameReader(self.source, realtime=options.realtime, loop=options.loop)
        self._pending: list[dict[str, Any]] = []  # results not yet recorded (commit_interval_s)
        self._commit_due = 0.0

    def _check_filters(self) -> None:
        from edge_agent.runtime.package import DETECTORS

        m, o = self.model.manifest, self.options
        if not o.filters:
            return
        if not isinstance(m.postprocessing, DETECTORS):
            raise ConfigError(
                [f"camera.labels/min_score/only_detections filter boxes; model {m.name!r} is not a detector"]
            )
        unknown = [label for label in o.labels if m.labels and label not in m.labels]
        if unknown:
            raise ConfigError([f"camera.labels: {unknown} not among model {m.name!r}'s labels {m.labels}"])

    def keep(self, row: dict[str, Any]) -> bool:
        """Apply the label/score filters to a detection row in place; False: do not record it."""
        o = self.options
        if not o.filters or "boxes" not in row:
            return True
        row["boxes"] = [
            b
            for b in row["boxes"]
            if (not o.labels or b.get("label") in o.labels) and float(b.get("score", 0.0)) >= o.min_score
        ]
        return bool(row["boxes"]) or not o.only_detections

    def run(self, stop: threading.Event) -> str:
        """Loop until the source ends, ``max_frames`` or ``stop``; returns why it stopped."""
        self.reader.start()
        self.state = "running"
        logger.info(
            "camera: %s -> %s/%s at %s fps at most (run %s)",
            self.source.text,
            self.model.manifest.name,
            self.model.manifest.version,
            self.options.fps or "unlimited",
            self.run_id,
        )
        period = 1.0 / self.options.fps if self.options.fps else 0.0
        next_due = next_status = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self._pending and now >= self._commit_due:
                    self.commit()
                if now >= next_status:
                    self.write_status()
                    next_status = now + self.options.status_interval_s
                wait = min(next_due, next_status, self._commit_due if self._pending else next_due) - now
                if wait > 0:
                    stop.wait(wait)  # the throttle: no frame is taken before next_due
                    continue
                frame = self.reader.next_frame(timeout=0.25)
                if frame is None:
                    if self.reader.finished:
                        self.state = "ended"
                        break
                    continue
                next_due = time.monotonic() + period
                self.process(frame)
                if self.options.max_frames is not None and self.stats.inferred >= self.options.max_frames:
                    self.state = "max_frames"
                    break
            if self.state == "running":
                self.state = "stopped"
        except BaseException:
            self.state = "failed"
            raise
        finally:
            self.reader.close()
            self.commit()
            self.write_status()
        return self.state

    def process(self, frame: Frame) -> None:
        from edge_agent.runtime.postprocess import postprocess
        from edge_agent.runtime.preprocess import transform

        st = self.stats
        t0, taken = time.monotonic(), time.time()
        if st.first_at is None:
            st.first_at = t0
        try:
            tensor, geo = transform(frame.image, self.spec)
            outputs = self.engine.infer(self.model, {self.spec.input: tensor[None]})
            row = postprocess(self.model.manifest, outputs, [geo])[0]
            t1 = time.monotonic()
            if self.keep(row):
                body = self.body(frame, row)
                self._pending.append(body)
                if len(self._pending) == 1:
                    self._commit_due = t1 + self.options.commit_interval_s
                if t1 >= self._commit_due or len(self._pending) >= MAX_PENDING:
                    self.commit()
            else:
                st.skipped += 1
        except EdgeAgentError as exc:
            st.failed += 1
            st.failed_in_row += 1
            logger.error("frame %d: %s", frame.index, exc.message)
            if st.failed_in_row >= MAX_CONSECUTIVE_ERRORS:
                raise CameraError(f"{st.failed_in_row} frames in a row failed; last: {exc.message}") from None
            return
        t2 = time.monotonic()
        st.failed_in_row = 0
        st.inferred += 1
        st.last_frame, st.last_at = frame.index, t0
        st.recent.append(t2)
        for key, value in (("infer", t1 - t0), ("record", t2 - t1), ("age", taken - frame.captured)):
            st.ms[key] += value * 1000

    def commit(self) -> None:
        """Record the buffered results in one transaction (one fsync for all of them)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        m, st = self.model.manifest, self.stats
        try:
            self.storage.require_room("recording camera frames")

            def record(conn: sqlite3.Connection) -> str:
                rid = ""
                for body in pending:
                    rid = self.storage.record_result(
                        conn, source="camera", model=m.name, version=m.version, body=body, ref=self.run_id
                    )
                return rid

            with self.storage.transaction(what="recording camera frames") as conn:
                st.last_result_id = record(conn)
            st.recorded += len(pending)
        except DiskFull as exc:  # a state, not a failure: count the frames, keep the loop and status
            st.unrecorded += len(pending)
            logger.warning("%d frames not recorded (%d so far): %s", len(pending), st.unrecorded, exc)

    def body(self, frame: Frame, row: dict[str, Any]) -> dict[str, Any]:
        h, w = frame.image.shape[:2]
        body: dict[str, Any] = {
            **row,
            "frame": frame.index,
            "cycle": frame.cycle,
            "captured": round(frame.captured, 6),
            "position_ms": None if frame.position_ms is None else round(frame.position_ms, 3),
            "width": w,
            "height": h,
            "camera": self.source.text,
        }
        if self.options.thumbnails and self.storage.disk.allow_optional("thumbnail"):
            body["thumbnail"] = thumbnail(frame.image)
        return body

    def status(self) -> dict[str, Any]:
        st, rs, now = self.stats, self.reader.stats, time.monotonic()
        n = max(st.inferred, 1)
        return {
            "pid": os.getpid(),
            "run": self.run_id,
            "state": self.state,
            "source": self.source.text,
            "model": self.model.manifest.name,
            "version": self.model.manifest.version,
            "started": round(self.started, 3),
            "updated": round(time.time(), 3),
            "realtime": self.reader.realtime,
            "fps_limit": self.options.fps,
            "source_fps": self.reader.source_fps,
            "frames_read": rs.read,
            "frames_inferred": st.inferred,
            "frames_dropped": rs.dropped,
            "reconnects": rs.reconnects,
            "cycles": rs.cycles,
            "frames_failed": st.failed,
            "frames_without_detection": st.skipped,
            "frames_recorded": st.recorded,
            "frames_unrecorded_disk_full": st.unrecorded,
            "disk": self.storage.disk.to_dict(),
            "connected": self.reader.connected,
            "fps": round(st.fps(now), 3),
            "fps_avg": round(st.fps_avg(), 3),
            "infer_ms_avg": round(st.ms["infer"] / n, 3),
            "record_ms_avg": round(st.ms["record"] / n, 3),
            "frame_age_ms_avg": round(st.ms["age"] / n, 3),
            "last_result_id": st.last_result_id,
            "last_frame": st.last_frame,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def write_status(self) -> None:
        text = json.dumps(self.status(), indent=1)
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.status_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not is_disk_full(exc) or not self._overwrite_status(text):
                logger.warning("cannot write %s: %s", self.status_path, exc)

    def _overwrite_status(self, text: str) -> bool:
        """A full disk has no block for a new file: rewrite the old one in place (its blocks are
        already allocated), so the status stays fresh; a reader may rarely see a torn copy."""
        data = text.encode()
        try:
            with open(self.status_path, "r+b") as f:
                if os.fstat(f.fileno()).st_blocks * 512 < len(data):
                    return False
                f.write(data)
                f.truncate(len(data))
        except OSError:
            return False
        return True


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The ``camera`` role: exit 0 at the end of a file, after ``--max-frames`` or on SIGTERM."""
    from edge_agent.bootstrap import build_engine, open_storage

    options = CameraOptions.from_config(config, args)
    engine = build_engine(config)
    storage = open_storage(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only set a flag: the loop finishes the frame it is recording

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        loop = CameraLoop(engine, storage, options, config.data_dir / STATUS_FILE)
        reason = loop.run(stop)
        logger.info(
            "camera stopped (%s): %d read, %d inferred, %d dropped, %.1f fps",
            reason,
            loop.reader.stats.read,
            loop.stats.inferred,
            loop.reader.stats.dropped,
            loop.stats.fps_avg(),
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        storage.close()
        engine.close()
