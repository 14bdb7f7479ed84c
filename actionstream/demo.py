"""`actionstream demo`: the whole product on one machine, in one command.

Starts `actionstream serve` as its own process on free loopback ports, renders
a synthetic camera feed whose true action is known for every frame, streams
it through the server over gRPC like a live camera, scrapes the server's
Prometheus endpoint, and ends with a summary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO

import grpc

from actionstream.demo_config import DemoConfig
from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.clients.scrape import scrape
from actionstream.service.clients.stream import (
    StreamError,
    StreamSummary,
    leave_if_source_held,
    stream_source,
)
from actionstream.service.config import StreamConfig
from actionstream.training.synth import SynthConfig, render_stream, write_video
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc


def _model_info(target: str) -> pb.ModelInfo:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        info: pb.ModelInfo = pb_grpc.ActionRecognitionStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=10
        )
        return info


def _printer(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    best = prediction.top[0]
    mark = "" if truth is None else ("  ok" if truth == best.label else f"  (truth: {truth})")
    print(
        f"frame {prediction.sequence:4d}  {best.label:>10s} {best.probability:4.0%}"
        f"  {latency_ms:5.1f} ms{mark}",
        flush=True,
    )


def _summary(
    info: pb.ModelInfo, s: StreamSummary, scraped: dict[str, float], seconds: float
) -> None:
    chance = 1 / len(info.labels)
    print("\n--- demo summary ---")
    print(f"model          {info.version}  ({len(info.labels)} actions, {info.fps:g} fps)")
    print(f"frames         {s.frames_sent} sent, {s.frames_answered} answered in {seconds:.1f} s")
    if s.accuracy is not None:
        print(f"accuracy       {s.accuracy:.1%} per frame against the known labels", end="")
        print(f" (chance {chance:.1%})")
    if s.p50_ms is not None and s.p99_ms is not None:
        print(f"latency        p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms", end="")
        print(" (frame sent -> prediction received)")
    processed = scraped.get("actionstream_frames_processed_total")
    count = scraped.get("actionstream_frame_latency_seconds_count")
    total = scraped.get("actionstream_frame_latency_seconds_sum")
    if processed is not None and count and total is not None:
        print(
            f"/metrics       frames processed {processed:g}, "
            f"server-side mean latency {total / count * 1e3:.1f} ms"
        )


def run_demo(cfg: DemoConfig) -> int:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        log = (out / "server.log").open("w")
    except OSError as e:
        # mkdir's word for a file where a folder must go is "File exists".
        why = f"{e.filename} is a file" if isinstance(e, FileExistsError) else e.strerror or e
        print(f"actionstream demo: cannot write {out} (--out): {why}", file=sys.stderr)
        return 1
    with log:
        return _run(cfg, out, log)


def _run(cfg: DemoConfig, out: Path, log: IO[str]) -> int:
    try:
        server = ServeProcess(log, args=["--model", cfg.model] if cfg.model else [])
    except ServeProcessError as e:
        print(f"actionstream demo: {e}", file=sys.stderr)
        return 1
    print(
        f"actionstream serve (pid {server.pid}) is up on {server.target}, "
        f"metrics on http://127.0.0.1:{server.metrics_port}/metrics"
    )
    with server:
        try:
            info = _model_info(server.target)
            print(f"model {info.version}: {', '.join(info.labels)} at {info.fps:g} fps")
            frames, labels = render_stream(
                int(cfg.seconds * info.fps), cfg.seed, SynthConfig(size=cfg.size, fps=info.fps)
            )
            feed = out / "feed.avi"
            labels_csv = write_video(frames, labels, feed, info.fps)
            size = f"{cfg.size}x{cfg.size}"
            print(f"streaming {feed} ({len(frames)} frames of {size}) to {server.target}")
            started = time.perf_counter()
            stream_cfg = StreamConfig(
                source=str(feed),
                target=server.target,
                labels=str(labels_csv),
                realtime=cfg.realtime,
            )
            summary = stream_source(stream_cfg, None if cfg.quiet else _printer)
            elapsed = time.perf_counter() - started
            scraped = scrape(server.metrics_port) if server.metrics_port else {}
        except StreamError as e:
            print(f"actionstream demo: {e}", file=sys.stderr)
            server.stop()  # before a process left with its source held ends at once
            leave_if_source_held(e.source_released, "actionstream demo", 1)
            return 1
        except (OSError, grpc.RpcError, grpc.FutureTimeoutError) as e:
            print(f"actionstream demo: {e}", file=sys.stderr)
            return 1
        _summary(info, summary, scraped, elapsed)
        code = server.stop()
    leave_if_source_held(summary.source_released, "actionstream demo", 130)  # server stopped
    if code != 0:
        print(
            f"actionstream demo: the server exited with {code}; its log: {log.name}",
            file=sys.stderr,
        )
        return 1
    print("server stopped cleanly")
    return 0
