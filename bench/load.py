"""Live cameras against the real server: open loop, rising N, where it stops keeping up.

    python bench/load.py [--cameras 20,40,60,80,100,150,200] [--seconds 10] [--plot load.png]
                         [--repeat N] [--swarm auto|cpp|python] [--server-arg=ARG ...]

`actionstream serve` runs in a process of its own and N cameras push
640×480 JPEG frames (about 67 KB, like a real camera's) at 10 fps from
another process, on a fixed clock whatever the server answers: a camera does
not wait for predictions, so an overloaded server shows up as drops or as
latency, never as a politely slower client. The cameras are the C++ swarm in
bench/cameras where it builds (g++ and gRPC's C++ files; `make swarm-tools`),
else Python's grpc.aio (`--swarm` chooses): on a machine the server shares,
the C++ ones leave it about a sixth of a core more at 100 cameras. For each N
it prints

- frames sent, answered, skipped by the server (reported in the Prediction)
  and never answered by the end of the run,
- capture-to-prediction latency p50/p99 (the frame's capture timestamp to the
  prediction arriving at the camera), over the first and second half of the
  run separately, so a server that falls further behind shows as growth;
  frames sent in the first second are left out of the latency (each stream's
  first frames pay for setting it up) but counted as answered or dropped,
- the server's CPU seconds per answered frame, read from the server process
  (/proc), and its mean batch size from /metrics,
- that CPU cost divided by the bare work on the same frames, timed in the
  same run: reduced-scale decode + resize of as many frames of the clip as
  the server's mean batch, then their model step, back to back on one thread
  for 8 s (the work as a batch does it: each stage runs after the other has
  had the core's caches), and a bare grpc.aio echo of the same messages (a
  server that reads every frame and answers as large a share of them as the
  server did, driven by the same cameras for as long, its CPU read the same
  way; an overloaded server still reads the frames it drops, so both sides
  count that reading),
- the same ratio with the decode and the step timed apart, each back to back
  on one frame and one batch ("apart": the bench's first yardstick; it
  leaves out what the decoder and the model cost each other through the
  caches),

and finally the largest N held with nothing dropped. Near the limit one run
says little: `--repeat N` runs each level N times and counts the runs held.
With matplotlib installed, `--plot` writes latency against N as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import grpc
import numpy as np

from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.clients.scrape import scrape
from actionstream.service.config import Listener
from actionstream.service.endpoint import grpc_listener
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

WIDTH, HEIGHT = 640, 480
# Sensor noise that brings the synthetic frames to a real camera's JPEG size
# (about 67 KB at quality 90); entropy decoding, so the size, is most of a decode.
NOISE_STD = 5.6
CLIP_FRAMES = 40
DRAIN_S = 1.0  # after the last frame: how long answers may still arrive
BARE_SPAN_S = 8.0  # how long the bare stages are timed for, after each level
TICKS = os.sysconf("SC_CLK_TCK")


def render_frames(n: int = CLIP_FRAMES) -> list[bytes]:
    """640×480 JPEGs of a synthetic scene in motion."""
    from actionstream.training.synth import SynthConfig, render_stream

    video, _ = render_stream(n, seed=1, cfg=SynthConfig(size=WIDTH))
    rng = np.random.default_rng(0)
    top = (WIDTH - HEIGHT) // 2
    out = []
    for frame in video[:, top : top + HEIGHT]:
        noisy = frame + rng.normal(0, NOISE_STD, frame.shape)
        image = np.clip(noisy, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (`serve --workers`' processes)."""
    children: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:  # a child that exited since it was listed
        return []
    for task in tasks:
        try:
            children.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:  # a thread that ended since the listing
            continue
    return [pid, *(p for child in sorted(children) for p in process_tree(child))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) and its live child
    processes (`serve --workers`) have used so far."""
    total = 0.0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a child that exited since it was listed
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """The options for the server under test and its cameras, as load.py and soak.py take
    them."""
    parser.add_argument(
        "--server-arg",
        action="append",
        default=["--max-streams", "1000"],
        help="extra `serve` argument (repeatable; the default lifts max_streams above N)",
    )
    parser.add_argument(
        "--swarm",
        choices=("auto", "cpp", "python"),
        default="auto",
        help="the cameras: bench/cameras (C++, built on first use; needs g++ and gRPC's C++ "
        "files), Python's grpc.aio, or auto: C++ where it builds",
    )


# --- the cameras (run in their own process) -------------------------------------------------


@dataclass
class CameraLog:
    sent: int = 0
    unsent: int = 0  # due while an earlier write was still blocked: the server was not reading
    answered: int = 0
    skipped: int = 0  # the server's own count of frames it dropped before an answer
    late_send_ms: float = 0.0  # worst lateness of the generator itself
    status: str = "OK"  # how the server ended the call, if it did


async def _camera(
    index: int,
    target: str,
    jpegs: list[bytes],
    fps: float,
    t0: float,
    seconds: float,
    log: CameraLog,
    latencies: list[tuple[float, float]],
) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per camera, like cameras
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = pb_grpc.ActionRecognitionStub(channel).StreamFrames()
        await call.write(pb.FrameRequest(options=pb.StreamOptions(stream_name=f"cam-{index}")))

        async def receive() -> None:
            try:
                await _receive()
            except grpc.aio.AioRpcError as e:
                log.status = e.code().name

        async def _receive() -> None:
            async for prediction in call:
                now_us = time.time_ns() / 1e3
                log.answered += 1
                log.skipped += getattr(prediction, "skipped_frames", 0)
                latencies.append(((now_us / 1e6) - t0, (now_us - prediction.timestamp_us) / 1e3))

        receiving = asyncio.create_task(receive())
        period = 1 / fps
        start = t0 + (index % 97) / 97 * period  # cameras spread over the period
        total = int(seconds * fps)
        k = 0
        while k < total:
            due = start + k * period
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            log.late_send_ms = max(log.late_send_ms, (time.time() - due) * 1e3)
            frame = pb.Frame(
                encoded=jpegs[k % len(jpegs)], sequence=k + 1, timestamp_us=int(due * 1e6)
            )
            try:
                await call.write(pb.FrameRequest(frame=frame))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                break  # the server ended the call: the receiver has its status
            log.sent += 1
            k += 1
            # A camera does not queue: frames that fell due while the write was blocked are lost.
            behind = int((time.time() - start) / period) - k
            if behind > 0:
                log.unsent += min(behind, total - k)
                k += behind
        await asyncio.sleep(max(0.0, t0 + seconds + DRAIN_S - time.time()))
        call.cancel()
        receiving.cancel()
        with_errors = await asyncio.gather(receiving, return_exceptions=True)
        del with_errors


@dataclass(frozen=True)
class CameraRun:
    """What the cameras counted over one run, as either swarm reports it (JSON)."""

    sent: int
    unsent: int  # due while an earlier write was still blocked
    answered: int
    skipped: int  # the server's own count of frames it dropped before an answer
    late_send_ms: float  # worst lateness of the generator itself
    refused: int  # cameras the server turned away (RESOURCE_EXHAUSTED)
    cpu_s: float  # the cameras' own CPU
    latencies: list[tuple[float, float]]  # (s since the clock started, capture -> answer ms)

    @classmethod
    def from_json(cls, text: str, cameras: int) -> CameraRun:
        """A swarm's report; SystemExit if the server refused any of its `cameras`, which
        would otherwise pass as quiet ones."""
        d = json.loads(text)
        run = cls(
            sent=int(d["sent"]),
            unsent=int(d["unsent"]),
            answered=int(d["answered"]),
            skipped=int(d["skipped"]),
            late_send_ms=float(d["late_send_ms"]),
            refused=int(d["refused"]),
            cpu_s=float(d["cpu_s"]),
            latencies=[(float(t), float(ms)) for t, ms in d["latencies"]],
        )
        if run.refused:
            raise SystemExit(f"the server refused {run.refused} of {cameras} cameras")
        return run

    @property
    def scheduled(self) -> int:
        return self.sent + self.unsent


async def _generate(target: str, cameras: int, fps: float, seconds: float) -> CameraRun:
    jpegs = render_frames()
    logs = [CameraLog() for _ in range(cameras)]
    latencies: list[tuple[float, float]] = []
    t0 = time.time() + 1.0  # every camera connected before the clock starts
    cpu0 = cpu_seconds(os.getpid())
    await asyncio.gather(
        *(_camera(i, target, jpegs, fps, t0, seconds, logs[i], latencies) for i in range(cameras))
    )
    return CameraRun(
        sent=sum(c.sent for c in logs),
        unsent=sum(c.unsent for c in logs),
        answered=sum(c.answered for c in logs),
        skipped=sum(c.skipped for c in logs),
        late_send_ms=max(c.late_send_ms for c in logs),
        refused=sum(c.status == "RESOURCE_EXHAUSTED" for c in logs),
        cpu_s=cpu_seconds(os.getpid()) - cpu0,
        latencies=latencies,
    )


def run_cameras(target: str, cameras: int, fps: float, seconds: float) -> CameraRun:
    """Runs the Python cameras in a child process (its own GIL and CPU account); returns its log."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--generate",
            target,
            "--cameras",
            str(cameras),
            "--fps",
            str(fps),
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return CameraRun.from_json(done.stdout, cameras)


# --- the same cameras in C++ (bench/cameras) ------------------------------------------------

SWARM_DIR = Path(__file__).resolve().parent / "cameras"


class SwarmUnavailable(Exception):
    pass


@dataclass(frozen=True)
class CppSwarm:
    """bench/cameras/cameras.cc: the cameras above at about half their CPU.

    On a 2-core machine the cameras' CPU is taken from the server under test
    (the Python ones use about a third of a core at 100 cameras, the C++ ones
    a sixth); real cameras are other machines.
    """

    binary: Path
    frames: list[Path]  # the clip, as JPEG files

    @classmethod
    def build(cls, jpegs: list[bytes], clip_dir: Path) -> CppSwarm:
        """Builds the swarm (g++, pkg-config and gRPC's C++ files needed) and writes the clip."""
        tools = ("g++", "pkg-config", "protoc", "grpc_cpp_plugin")
        missing = [tool for tool in tools if not shutil.which(tool)]
        if missing:
            raise SwarmUnavailable(f"{', '.join(missing)} not found")
        done = subprocess.run(
            ["make", "-s", "-C", str(SWARM_DIR)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise SwarmUnavailable(f"make -C {SWARM_DIR} failed: {done.stderr.strip()[-500:]}")
        frames = []
        for i, jpeg in enumerate(jpegs):
            path = clip_dir / f"{i:03d}.jpg"
            path.write_bytes(jpeg)
            frames.append(path)
        return cls(SWARM_DIR.parents[1] / "build" / "cameras" / "cameras", frames)

    def run(self, target: str, cameras: int, fps: float, seconds: float) -> CameraRun:
        argv = [str(self.binary), target, str(cameras), str(fps), str(seconds)]
        done = subprocess.run(
            [*argv, *map(str, self.frames)], stdout=subprocess.PIPE, text=True, check=True
        )
        return CameraRun.from_json(done.stdout, cameras)


Cameras = Callable[[str, int, float, float], CameraRun]


# --- the bare gRPC echo (run in its own process) ------------------------------------------


class Echo(pb_grpc.ActionRecognitionServicer):
    """Reads every frame and answers `share` of them with a fixed three-label prediction:
    gRPC's part of the server's work, when the server answered that share of the frames."""

    _TOP: ClassVar = [
        pb.LabelScore(label=f"label_{i}", probability=0.5 / (i + 1)) for i in range(3)
    ]

    def __init__(self, share: float = 1.0) -> None:
        self.share = share

    async def StreamFrames(
        self, request_iterator: AsyncIterator[pb.FrameRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Prediction]:
        read = 0
        async for request in request_iterator:
            if request.HasField("frame"):
                read += 1
                # Spread evenly: frame n is answered when n * share crosses a whole number.
                if int(read * self.share) == int((read - 1) * self.share):
                    continue
                frame = request.frame
                yield pb.Prediction(
                    sequence=frame.sequence, timestamp_us=frame.timestamp_us, top=self._TOP
                )


async def _serve_echo(port_file: Path, share: float) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 9 << 20)])
    pb_grpc.add_ActionRecognitionServicer_to_server(Echo(share), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


class EchoProcess:
    def __init__(self, share: float = 1.0, listener: Listener = "eventengine") -> None:
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        # gRPC reading as the server's did (its ready file says how), so the echo is gRPC's
        # part of the server's work and not of another setup's.
        env = dict(os.environ)  # the server started from it: it names no other listener
        grpc_listener.ask(env, listener)
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(port_file), "--echo-share", str(share)],
            env=env,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{port_file.read_text()}"
        self.pid = self._proc.pid

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._dir.cleanup()


# --- the bare stages, timed in this process ----------------------------------------------


@dataclass(frozen=True)
class BareStages:
    decode_ms: float  # decode + resize alone, back to back on one frame, median over the clip
    step_ms: dict[int, float]  # batch size -> one step alone, back to back, per frame
    # batch size -> decode that many frames of the clip, then step them, per frame: the
    # work as a batch does it, each stage after the other has had the core's caches
    batch_ms: dict[int, float]

    def step_at(self, batch: float) -> float:
        return _interpolate(self.step_ms, batch)

    def batch_at(self, batch: float) -> float:
        return _interpolate(self.batch_ms, batch)


def _interpolate(by_size: dict[int, float], batch: float) -> float:
    sizes = sorted(by_size)
    return float(np.interp(batch, sizes, [by_size[b] for b in sizes]))


def _jpeg_floor(server_args: list[str]) -> float:
    """The server's --jpeg-floor, so the bare decode works at the scale the server does."""
    from actionstream.service.inference.frames import JPEG_FLOOR

    floor = JPEG_FLOOR
    for i, arg in enumerate(server_args):
        if arg == "--jpeg-floor" and i + 1 < len(server_args):
            floor = float(server_args[i + 1])
        elif arg.startswith("--jpeg-floor="):
            floor = float(arg.split("=", 1)[1])
    return floor


def time_bare_stages(
    jpegs: list[bytes], jpeg_floor: float, batch: float, seconds: float, slice_rounds: int = 20
) -> BareStages:
    """The bare work at the batch sizes either side of `batch`, timed back to back in
    slices for `seconds`: each figure is the mean over the slices of the slice's median.

    Spread over `seconds` because this machine's speed moves by a sixth from one second
    to the next while the server's CPU a frame is a mean over its whole run; each
    slice's median keeps a stray interrupt out of it. Within a slice the stages are
    timed in interleaved rounds, so the drift touches every figure alike."""
    from actionstream.service.inference.frames import FrameDecoder
    from actionstream.service.inference.model import OnnxStepModel

    model = OnnxStepModel.load(threads=1)
    meta = model.metadata
    decoder = FrameDecoder(meta.height, meta.width, 8 << 20, 4096 * 4096, jpeg_floor)
    image = decoder.decode_image(jpegs[0])
    sizes = sorted({max(1, int(np.floor(batch))), max(1, int(np.ceil(batch)))})
    repeated = {b: np.repeat(image[np.newaxis], b, axis=0) for b in sizes}
    states = {b: model.zero_state(b) for b in sizes}
    decodes: list[float] = []  # one median a slice
    steps: dict[int, list[float]] = {b: [] for b in sizes}
    batches: dict[int, list[float]] = {b: [] for b in sizes}
    k = 0
    deadline = time.monotonic() + seconds
    while not decodes or time.monotonic() < deadline:
        slice_decodes: list[float] = []
        slice_steps: dict[int, list[float]] = {b: [] for b in sizes}
        slice_batches: dict[int, list[float]] = {b: [] for b in sizes}
        for r in range(slice_rounds + 1):  # the first round of a slice warms up
            data = jpegs[k % len(jpegs)]
            decoder.decode_image(data)
            t = time.perf_counter()
            decoder.decode_image(data)  # the same frame again, back to back
            decode = time.perf_counter() - t
            for b in sizes:
                model.step(repeated[b], states[b])
                t = time.perf_counter()
                model.step(repeated[b], states[b])  # the same step again, back to back
                step = time.perf_counter() - t
                # As a batch does it: that many fresh frames of the clip, then their step.
                t = time.perf_counter()
                images = [decoder.decode_image(jpegs[(k + i) % len(jpegs)]) for i in range(b)]
                model.step(np.stack(images), states[b])
                whole = time.perf_counter() - t
                k += b
                if r:
                    slice_steps[b].append(step / b)
                    slice_batches[b].append(whole / b)
            if r:
                slice_decodes.append(decode)
        decodes.append(statistics.median(slice_decodes))
        for b in sizes:
            steps[b].append(statistics.median(slice_steps[b]))
            batches[b].append(statistics.median(slice_batches[b]))
    return BareStages(
        statistics.mean(decodes) * 1e3,
        {b: statistics.mean(v) * 1e3 for b, v in steps.items()},
        {b: statistics.mean(v) * 1e3 for b, v in batches.items()},
    )


# --- one load level against the real server -----------------------------------------------


@dataclass(frozen=True)
class Level:
    cameras: int
    scheduled: int
    answered: int
    skipped: int
    dropped: int  # scheduled and never answered: skipped, lost in the server, or not sent
    p50_ms: float
    p99_ms: float
    p99_first_ms: float
    p99_second_ms: float
    server_ms_per_frame: float
    batch: float
    echo_ms_per_frame: float
    work_ms: float  # decode + step timed as a batch of the server's mean size, per frame
    bare_ms: float  # work_ms + echo_ms_per_frame
    decode_ms: float  # the decode + resize alone, back to back
    apart_ms: float  # the stages timed apart, each back to back: decode + step + echo
    generator_cpu: float  # cores the cameras used
    late_send_ms: float

    @property
    def held(self) -> bool:
        return self.dropped == 0

    @property
    def ratio(self) -> float:
        return self.server_ms_per_frame / self.bare_ms

    @property
    def ratio_apart(self) -> float:
        return self.server_ms_per_frame / self.apart_ms


def percentiles(latencies: list[tuple[float, float]], seconds: float) -> tuple[float, ...]:
    if not latencies:
        return (float("nan"),) * 4
    arr = np.array(latencies)
    steady = arr[arr[:, 0] >= 1.0]  # the first second is connection set-up
    if len(steady) == 0:
        steady = arr
    half = steady[:, 0] < seconds / 2
    first = steady[half, 1] if half.any() else steady[:, 1]
    second = steady[~half, 1] if (~half).any() else steady[:, 1]
    p50, p99 = np.percentile(steady[:, 1], [50, 99])
    return float(p50), float(p99), float(np.percentile(first, 99)), float(np.percentile(second, 99))


@dataclass(frozen=True)
class Served:
    """One run of the cameras against a fresh server: what they saw and what it spent."""

    run: CameraRun
    cpu_s: float  # the server's CPU over the run
    processed: float  # frames the server answered, from /metrics
    batch: float  # its mean batch size
    listener: Listener  # what read its connections

    @property
    def scheduled(self) -> int:
        return self.run.scheduled

    @property
    def dropped(self) -> int:
        return self.run.scheduled - self.run.answered


def serve_cameras(
    cameras: int, fps: float, seconds: float, server_args: list[str], swarm: Cameras
) -> Served:
    with tempfile.TemporaryFile("w+") as log, ServeProcess(log, args=server_args) as server:
        assert server.metrics_port is not None
        before, cpu0 = scrape(server.metrics_port), cpu_seconds(server.pid)
        run = swarm(server.target, cameras, fps, seconds)
        cpu = cpu_seconds(server.pid) - cpu0
        after = scrape(server.metrics_port)
    processed = after["actionstream_frames_processed_total"] - before.get(
        "actionstream_frames_processed_total", 0.0
    )
    batches = after.get("actionstream_batch_size_count", 0.0) - before.get(
        "actionstream_batch_size_count", 0.0
    )
    stepped = after.get("actionstream_batch_size_sum", 0.0) - before.get(
        "actionstream_batch_size_sum", 0.0
    )
    batch = stepped / batches if batches else 1.0
    return Served(run, cpu, processed, batch, server.ready["grpc_listener"])


def measure(
    cameras: int,
    fps: float,
    seconds: float,
    jpegs: list[bytes],
    server_args: list[str],
    swarm: Cameras = run_cameras,
) -> Level:
    served = serve_cameras(cameras, fps, seconds, server_args, swarm)
    run, cpu, processed, batch = served.run, served.cpu_s, served.processed, served.batch

    # The echo reads every frame the cameras send and answers the share the server
    # answered: an overloaded server still reads the frames it drops, and so does the echo.
    share = min(1.0, run.answered / max(1, run.sent))
    echo = EchoProcess(share, served.listener)
    try:
        echo_cpu0 = cpu_seconds(echo.pid)
        echo_run = swarm(echo.target, cameras, fps, seconds)
        echo_cpu = cpu_seconds(echo.pid) - echo_cpu0
    finally:
        echo.stop()
    echo_ms = echo_cpu / max(1, echo_run.answered) * 1e3
    # Timed right after the level, not once for the run, and over most of a level's
    # length: this machine's speed drifts by tens of percent over minutes and by a sixth
    # from one second to the next, and the ratio must compare like with like.
    bare = time_bare_stages(jpegs, _jpeg_floor(server_args), batch, BARE_SPAN_S)

    p50, p99, p99a, p99b = percentiles(run.latencies, seconds)
    work_ms = bare.batch_at(batch)
    return Level(
        cameras=cameras,
        scheduled=run.scheduled,
        answered=run.answered,
        skipped=run.skipped,
        dropped=run.scheduled - run.answered,
        p50_ms=p50,
        p99_ms=p99,
        p99_first_ms=p99a,
        p99_second_ms=p99b,
        server_ms_per_frame=cpu / max(1.0, processed) * 1e3,
        batch=batch,
        echo_ms_per_frame=echo_ms,
        work_ms=work_ms,
        bare_ms=work_ms + echo_ms,
        decode_ms=bare.decode_ms,
        apart_ms=bare.decode_ms + bare.step_at(batch) + echo_ms,
        generator_cpu=run.cpu_s / (seconds + 1 + DRAIN_S),
        late_send_ms=run.late_send_ms,
    )


def plot(levels: list[Level], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = [lv.cameras for lv in levels]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(n, [lv.p50_ms for lv in levels], "o-", label="p50")
    ax.plot(n, [lv.p99_ms for lv in levels], "s-", label="p99")
    for lv in levels:
        if lv.dropped:
            share = lv.dropped / lv.scheduled
            label = f"{share:.0%} dropped" if share >= 0.01 else f"{lv.dropped} dropped"
            ax.annotate(label, (lv.cameras, lv.p99_ms), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("cameras (640×480 JPEG, 10 fps each)")
    ax.set_ylabel("capture → prediction (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", default="20,40,60,80,100,150,200", help="N to try")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--plot", type=Path, help="write latency against N to this PNG")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per level: the first as above, the others server and cameras only, "
        "each reported, then how many held",
    )
    add_server_args(parser)
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # TARGET: be the cameras
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)  # PORT_FILE
    parser.add_argument("--echo-share", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    # Checked before a frame is rendered or a server started: a bad level late in the list
    # would fail after the good ones had run.
    try:
        counts = [int(s) for s in args.cameras.split(",")]
    except ValueError:
        parser.error(f"--cameras takes whole numbers joined by commas, got {args.cameras!r}")
    if min(counts) < 1 or args.fps <= 0 or args.seconds <= 0:
        parser.error(
            f"--cameras, --fps and --seconds must be above 0, got {args.cameras} {args.fps:g} "
            f"{args.seconds:g}"
        )
    if args.plot and not args.plot.resolve().parent.is_dir():
        parser.error(f"--plot: no folder {args.plot.resolve().parent} to write it in")

    if args.serve_echo:
        asyncio.run(_serve_echo(args.serve_echo, args.echo_share))
        return
    if args.generate:
        log = _generate(args.generate, int(args.cameras), args.fps, args.seconds)
        print(json.dumps(dataclasses.asdict(asyncio.run(log))))
        return

    jpegs = render_frames()
    size_kb = statistics.mean(len(j) for j in jpegs) / 1e3
    print(f"{WIDTH}x{HEIGHT} JPEG frames, {size_kb:.0f} KB on average, {args.fps:g} fps a camera")
    with tempfile.TemporaryDirectory() as clip_dir:
        try:
            levels = run_levels(args, jpegs, choose_cameras(args.swarm, jpegs, Path(clip_dir)))
        except ServeProcessError as e:  # the server's own line: a port in use, a bad model
            raise SystemExit(f"load.py: {e}") from None
    held = [lv.cameras for lv in levels if lv.held]
    print(f"largest N held with no drops: {max(held) if held else 'none'}")
    if args.plot:
        print(f"plot: {args.plot}" if plot(levels, args.plot) else "no plot: needs matplotlib")


def choose_cameras(swarm: str, jpegs: list[bytes], clip_dir: Path) -> Cameras:
    if swarm == "python":
        print("cameras: Python (grpc.aio)")
        return run_cameras
    try:
        cameras = CppSwarm.build(jpegs, clip_dir).run
    except SwarmUnavailable as e:
        if swarm == "cpp":
            raise SystemExit(f"the C++ camera swarm is unavailable: {e}") from None
        print(f"cameras: Python (the C++ swarm is unavailable: {e})")
        return run_cameras
    print("cameras: the C++ swarm (bench/cameras)")
    return cameras


def run_levels(args: argparse.Namespace, jpegs: list[bytes], cameras: Cameras) -> list[Level]:
    print(
        "work = decode + resize of a batch of the server's mean size, then its step; "
        "echo = a bare gRPC echo reading every frame, answering the share the server "
        "answered; bare = work + echo; apart = the stages timed apart, each back to back"
    )
    print(
        f"{'N':>4} {'sent':>6} {'answered':>8} {'skipped':>7} {'dropped':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p99 1st/2nd half':>16} {'server ms/frame':>15} {'batch':>5} "
        f"{'decode ms':>9} {'work ms':>7} {'echo ms':>7} {'bare ms':>7} {'ratio':>6} "
        f"{'apart':>6} {'gen cores':>9}"
    )
    levels = []
    for n in (int(s) for s in args.cameras.split(",")):
        lv = measure(n, args.fps, args.seconds, jpegs, args.server_arg, cameras)
        levels.append(lv)
        print(
            f"{n:>4} {lv.scheduled:>6} {lv.answered:>8} {lv.skipped:>7} {lv.dropped:>7} "
            f"{lv.p50_ms:>7.1f} {lv.p99_ms:>7.1f} "
            f"{lv.p99_first_ms:>7.0f} / {lv.p99_second_ms:<6.0f} "
            f"{lv.server_ms_per_frame:>15.3f} {lv.batch:>5.1f} {lv.decode_ms:>9.3f} "
            f"{lv.work_ms:>7.3f} {lv.echo_ms_per_frame:>7.3f} {lv.bare_ms:>7.3f} "
            f"{lv.ratio:>5.2f}x {lv.ratio_apart:>5.2f}x {lv.generator_cpu:>9.2f}",
            flush=True,
        )
        if args.repeat > 1:
            repeat_level(n, args, cameras, first_held=lv.held)
    return levels


def repeat_level(n: int, args: argparse.Namespace, cameras: Cameras, first_held: bool) -> None:
    """More runs of one level (server and cameras only): near the limit one run says little."""
    held = int(first_held)
    for k in range(2, args.repeat + 1):
        served = serve_cameras(n, args.fps, args.seconds, args.server_arg, cameras)
        _, p99, _, _ = percentiles(served.run.latencies, args.seconds)
        held += served.dropped == 0
        print(
            f"      run {k}: {served.run.answered} of {served.scheduled} answered, "
            f"p99 {p99:.1f} ms, {served.cpu_s / max(1.0, served.processed) * 1e3:.3f} ms/frame",
            flush=True,
        )
    print(
        f"      {n} cameras held with nothing dropped in {held} of {args.repeat} runs", flush=True
    )


if __name__ == "__main__":
    main()
