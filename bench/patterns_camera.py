"""Patterns benchmark (bench/patterns.py): the camera role against in-process inference on the same
decoded frames."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

# -- camera -----------------------------------------------------------------------------------------
from bench.patterns_support import BenchError, Ctx, Row, fx, p50, proc_memory, ratio
from edge_agent.runtime.postprocess import postprocess
from edge_agent.runtime.preprocess import transform
from tests.patterns.test_camera import camera
from tests.patterns.videos import read_frames, write_face_video


def face_video(ctx: Ctx) -> Path:
    if ctx.video is None:
        face, blank = ctx.cfg.video_frames
        path = ctx.tmp / "face.avi"
        write_face_video(path, face_frames=face, blank_frames=blank)
        ctx.video = path
    return ctx.video


def bench_camera(ctx: Ctx) -> tuple[list[Row], dict[str, Any]]:
    cfg, video = ctx.cfg, face_video(ctx)
    frames = read_frames(video)
    model = ctx.engine.model("face")
    spec = model.manifest.preprocessing
    if spec is None:
        raise BenchError("face has no image preprocessing")
    prepared = [transform(f, spec)[0][None] for f in frames]
    k, per_round = len(frames), max(60, cfg.camera_frames // 3)
    rates: dict[str, list[float]] = {"model": [], "pipeline": []}

    def in_process_round() -> None:
        """The model alone on prepared tensors, then the role's per-frame work minus the commit."""
        t0 = time.perf_counter()
        for i in range(per_round):
            ctx.engine.infer(model, {spec.input: prepared[i % k]})
        rates["model"].append(per_round / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(per_round):
            tensor, geo = transform(frames[i % k], spec)
            postprocess(model.manifest, ctx.engine.infer(model, {spec.input: tensor[None]}), [geo])
        rates["pipeline"].append(per_round / (time.perf_counter() - t0))

    for tensor in prepared[:5]:  # warm-up
        ctx.engine.infer(model, {spec.input: tensor})
    rounds = 1 if ctx.quick else 3
    for _ in range(rounds):  # rounds before and after the role run: the machine's noise on both sides
        in_process_round()
    peak: dict[str, int] = {}
    with camera(
        ctx.models,
        ctx.tmp / "camera-data",
        str(video),
        "--max-frames",
        str(cfg.camera_frames),
        realtime=False,
        fps=1000,
        loop=True,
    ) as run:
        while run.proc.poll() is None:
            with contextlib.suppress(OSError):
                peak = proc_memory(run.proc.pid)
            time.sleep(0.1)
        code = run.wait(120)
        status = run.status()
        if code != 0 or status.get("state") != "max_frames":
            raise BenchError(f"camera role exited {code}, state {status.get('state')}:\n{run.logs()[-2000:]}")
    for _ in range(rounds):
        in_process_round()
    role_fps = float(status["fps_avg"])
    model_fps, pipeline_fps = p50(rates["model"]), p50(rates["pipeline"])

    h, w = frames[0].shape[:2]
    rows = [
        Row(
            "camera",
            f"role, unthrottled (realtime=false, fps=1000), {cfg.camera_frames} frames {w}x{h} MJPG, face",
            f"{role_fps:.0f} frames/s (infer {status['infer_ms_avg']:.2f} + record "
            f"{status['record_ms_avg']:.2f} ms/frame, {status['frames_dropped']} dropped)",
            f"model alone in-process {model_fps:.0f} frames/s",
            fx(ratio(role_fps, model_fps)),
        ),
        Row(
            "camera",
            "in-process on the same decoded frames: transform + infer + postprocess",
            f"{pipeline_fps:.0f} frames/s",
            f"model alone {model_fps:.0f} frames/s",
            fx(ratio(pipeline_fps, model_fps)),
        ),
    ]
    data = {
        "role": status,
        "role_memory_kb": peak,
        "in_process_fps": rates,
        "frames_per_round": per_round,
        "frames": cfg.camera_frames,
    }
    return rows, data
