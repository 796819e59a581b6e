"""The camera role (edge AI), end to end: the real ``edge-agent camera`` process on generated videos."""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from edge_agent.storage import OUTBOX_ROWS, Result, Storage, envelope
from edge_agent.workers.camera import STATUS_FILE, CameraLoop, CameraOptions
from edge_agent.workers.frames import parse_source, redact
from tests.conftest import ROOT, copy_models
from tests.patterns.videos import TestVideo, read_frames, write_face_video

BOX_TOLERANCE_PX = 1.0  # role vs Engine.predict on the same decoded frame: same pixels, same model
MOTION_TOLERANCE_PX = 8.0  # detected face centre vs where the video drew it


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"camera role still running after {timeout} s:\n{self.logs()}") from None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        path = self.data_dir / STATUS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def results(self) -> list[Result]:
        st = Storage.in_dir(self.data_dir)
        try:
            return sorted(st.results(source="camera", limit=100_000), key=lambda r: r.created)
        finally:
            st.close()


@contextmanager
def camera(
    model_dir: Path, data_dir: Path, source: str, *args: str, **env: str | float | bool
) -> Iterator[Run]:
    """Start ``edge-agent camera``; always stops it (SIGTERM, then SIGKILL)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    full_env.update({f"EDGE_CAMERA__{k.upper()}": str(v).lower() for k, v in env.items()})
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
    log = data_dir / "camera.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "camera", "--source", source, *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    run = Run(proc, data_dir, log)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def boxes(result: Result) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = result.body["boxes"]
    return found


def centre_x(box: dict[str, Any]) -> float:
    return float(box["xmin"] + box["xmax"]) / 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("models"), ["face"])


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> TestVideo:
    """90 frames at 30 fps (3 s): 60 with a face sliding 80 px right, then 30 blank."""
    return write_face_video(tmp_path_factory.mktemp("video") / "face.avi")


@pytest.fixture(scope="module")
def played(models: Path, video: TestVideo, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole video played in real time, inference throttled to 5 fps."""
    with camera(models, tmp_path_factory.mktemp("played"), str(video.path), fps=5) as run:
        code = run.wait()
        assert code == 0, run.logs()
    return run


# -- the played video -------------------------------------------------------------------
def test_every_face_frame_has_one_box_matching_the_model(
    played: Run, video: TestVideo, engine: Engine
) -> None:
    frames = read_frames(video.path)
    results = played.results()
    face = [r for r in results if video.offsets[r.body["frame"]] is not None]
    assert len(face) >= 8, [r.body["frame"] for r in results]
    for r in face:
        ok, png = cv2.imencode(".png", frames[r.body["frame"]])
        assert ok
        expected = engine.predict("face", images=[png.tobytes()]).results[0]["boxes"]
        assert len(boxes(r)) == 1 == len(expected), r.body
        got, want = boxes(r)[0], expected[0]
        for key in ("xmin", "ymin", "xmax", "ymax"):
            assert abs(got[key] - want[key]) <= BOX_TOLERANCE_PX, (r.body["frame"], key, got, want)
        assert (r.model, r.version, r.source, r.body["width"], r.body["height"]) == (
            "face",
            "1",
            "camera",
            320,
            240,
        )


def test_the_box_follows_the_face(played: Run, video: TestVideo) -> None:
    face = [r for r in played.results() if video.offsets[r.body["frame"]] is not None]
    xs = [centre_x(boxes(r)[0]) for r in face]
    for r, x in zip(face, xs, strict=True):
        drawn = video.face_center_x(r.body["frame"])
        assert drawn is not None and abs(x - drawn) <= MOTION_TOLERANCE_PX, (r.body["frame"], x, drawn)
    assert xs[-1] - xs[0] >= 50, xs  # it moved (the video moves it 80 px)
    assert all(b >= a - 2 for a, b in itertools.pairwise(xs)), xs


def test_blank_frames_have_no_boxes(played: Run, video: TestVideo) -> None:
    blank = [r for r in played.results() if video.offsets[r.body["frame"]] is None]
    assert len(blank) >= 3
    assert all(boxes(r) == [] for r in blank), [r.body for r in blank if boxes(r)]


def test_inference_is_throttled_and_stale_frames_dropped(played: Run, video: TestVideo) -> None:
    results, status = played.results(), played.status()
    assert status["state"] == "ended"
    assert status["frames_read"] == video.frames  # real time: every frame decoded...
    assert status["frames_inferred"] == len(results)
    assert 12 <= len(results) <= 18, len(results)  # ...3 s at 5 fps ~ 15 inferred
    assert status["frames_dropped"] >= video.frames - len(results) - 1  # ...the rest dropped
    assert 4.0 <= status["fps_avg"] <= 5.5, status
    captured = [r.body["captured"] for r in results]
    rate = (len(captured) - 1) / (captured[-1] - captured[0])
    assert 4.0 <= rate <= 5.5, rate
    assert status["last_result_id"] == results[-1].id


def test_every_result_is_in_the_outbox(played: Run) -> None:
    st = Storage.in_dir(played.data_dir)
    try:
        ids = {r.id for r in played.results()}
        rows = st.conn.execute(OUTBOX_ROWS).fetchall()
        assert st.outbox_depth() == len(ids) == len(rows)
        assert {row["id"] for row in rows} == ids
        assert all(envelope(row)["source"] == "camera" for row in rows)  # type: ignore[index]
    finally:
        st.close()


# -- options --------------------------------------------------------------------------------
def test_max_frames_and_thumbnails(models: Path, video: TestVideo, tmp_path: Path) -> None:
    with camera(models, tmp_path, str(video.path), "--max-frames", "4", fps=120, thumbnails=True) as run:
        assert run.wait() == 0, run.logs()
    results = run.results()
    assert len(results) == 4 and run.status()["state"] == "max_frames"
    for r in results:
        thumb = r.body["thumbnail"]
        img = cv2.imdecode(np.frombuffer(base64.b64decode(thumb["data"]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (120, 160, 3) == (thumb["height"], thumb["width"], 3)


def test_loop_restarts_the_file(models: Path, tmp_path: Path) -> None:
    short = write_face_video(tmp_path / "short.avi", face_frames=6, blank_frames=0)
    with camera(models, tmp_path / "data", str(short.path), "--max-frames", "15", fps=120, loop=True) as run:
        assert run.wait() == 0, run.logs()
    assert {r.body["cycle"] for r in run.results()} >= {0, 1}
    assert run.status()["cycles"] >= 1


def test_sigterm_stops_cleanly_with_every_result_complete(
    models: Path, video: TestVideo, tmp_path: Path
) -> None:
    with camera(models, tmp_path, str(video.path), fps=30, loop=True) as run:
        deadline = time.monotonic() + 20
        while run.status().get("frames_inferred", 0) < 5:
            assert run.proc.poll() is None and time.monotonic() < deadline, run.logs()
            time.sleep(0.1)
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(10) == 0, run.logs()
    status, results = run.status(), run.results()
    assert status["state"] == "stopped" and "Traceback" not in run.logs()
    assert status["frames_inferred"] == len(results) >= 5
    st = Storage.in_dir(tmp_path)
    try:
        assert st.outbox_depth() == len(results)
    finally:
        st.close()
    for r in results:
        assert {"boxes", "frame", "cycle", "captured", "width", "height", "camera"} <= r.body.keys()


def test_as_fast_as_possible_infers_every_frame(models: Path, video: TestVideo, tmp_path: Path) -> None:
    """realtime=False (the library option behind the benchmark): no frame dropped, no throttle."""
    engine = Engine(ModelStore(models, tmp_path / "state.json"))
    storage = Storage.in_dir(tmp_path)
    try:
        options = CameraOptions(str(video.path), fps=None, realtime=False)
        loop = CameraLoop(engine, storage, options, tmp_path / STATUS_FILE)
        assert loop.run(threading.Event()) == "ended"
        status = json.loads((tmp_path / STATUS_FILE).read_text())
        assert status["frames_read"] == status["frames_inferred"] == video.frames
        assert status["frames_dropped"] == 0 and status["fps_avg"] > video.fps  # faster than real time
        assert sorted(r.body["frame"] for r in storage.results(limit=1000)) == list(range(video.frames))
        assert storage.outbox_depth() == video.frames
    finally:
        storage.close()
        engine.close()


# -- a live stream ------------------------------------------------------------------------------
@contextmanager
def mjpeg_server(frames: list[np.ndarray], per_connection: int, fps: float) -> Iterator[str]:
    """An HTTP MJPEG camera that sends ``per_connection`` frames in real time, then hangs up."""
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for i in range(per_connection):
                jpg = jpegs[i % len(jpegs)]
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                try:
                    self.wfile.write(head + jpg + b"\r\n")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1 / fps)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:secret@127.0.0.1:{server.server_address[1]}/stream.mjpg"
    finally:
        server.shutdown()
        server.server_close()


def test_a_dropped_stream_is_reconnected(models: Path, video: TestVideo, tmp_path: Path) -> None:
    frames = read_frames(video.path)[:60:3]
    with (
        mjpeg_server(frames, per_connection=15, fps=30) as url,
        camera(models, tmp_path, url, "--max-frames", "12", fps=10) as run,
    ):
        assert run.wait(30) == 0, run.logs()
    status, results = run.status(), run.results()
    assert status["reconnects"] >= 1 and isinstance(status["connected"], bool), status
    assert status["frames_dropped"] > 0  # 30 fps arriving, 10 fps inferred
    assert len(results) == 12
    indices = [r.body["frame"] for r in results]
    assert indices == sorted(indices) and len(set(indices)) == 12
    assert all(len(boxes(r)) == 1 for r in results)
    assert "secret" not in run.logs() and "secret" not in json.dumps(status)
    assert all(r.body["camera"] == redact(url) for r in results)


# -- failures --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source", ["missing.avi", "/dev/video99", "not-a-video.avi", "rtsp://127.0.0.1:9/none"]
)
def test_a_bad_source_is_a_clear_error(models: Path, tmp_path: Path, source: str) -> None:
    (tmp_path / "not-a-video.avi").write_text("this is not a video\n")
    path = str(tmp_path / source) if source.endswith(".avi") else source
    with camera(models, tmp_path / "data", path) as run:
        code = run.wait()
    out = run.logs()
    assert code == 1, out
    assert "edge-agent: error: camera source" in out and "Traceback" not in out, out
    assert not run.results()


def test_no_source_configured_is_a_config_error(models: Path, tmp_path: Path) -> None:
    with camera(models, tmp_path, "") as run:
        code = run.wait()
    assert code == 3 and "camera.source: not set" in run.logs(), run.logs()


def test_sources_are_classified_and_passwords_masked() -> None:
    assert parse_source("0").kind == "device" and parse_source("0").target == 0
    assert parse_source("/dev/video2").kind == "device"
    assert parse_source("rtsp://u:p@cam:554/live").text == "rtsp://***@cam:554/live"
    assert parse_source("http://cam/video.mjpg").kind == "stream"
    assert parse_source("clips/door.mp4").kind == "file"
    assert parse_source("file:///data/door.mp4").target == "/data/door.mp4"
    assert redact("/videos/a.avi") == "/videos/a.avi"
