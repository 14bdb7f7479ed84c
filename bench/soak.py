"""A long run of live cameras against one server: does anything grow?

    python bench/soak.py [--cameras 60] [--minutes 20] [--every 30] [--settle 60]
                         [--swarm auto|cpp|python] [--server-arg=ARG ...]

`bench/load.py` runs each level for seconds; a server runs for days. Here one
`actionstream serve` and N of load.py's cameras (640×480 JPEG at 10 fps, open
loop, each camera one call for the whole run) run for `--minutes`. Every
`--every` seconds the server is sampled: its resident memory, open file
descriptors and threads (summed over `--workers`' processes), its CPU a
frame answered in that interval, and the frames it answered and dropped
(from /metrics). Once the cameras stop, it is sampled again after `--settle`
seconds, when their streams should be gone and memory and descriptors back
near where they started, and then stopped with SIGTERM, its exit timed.

It prints a line per interval, with the cameras' capture-to-prediction
latency added once they report it at the end, and then what would show a
leak or a server falling behind: the slope of resident memory over the
second half of the run (MB an hour), the last interval's p99 and CPU a
frame against the first's, and what the server kept after the cameras left.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # bench/ is not a package

from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.clients.scrape import scrape

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the cameras' clock started (negative: before)
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float
    processed: float  # frames answered, all told (/metrics)
    dropped: float  # frames dropped, every reason
    active: float  # streams open


def sample(server: ServeProcess, t: float) -> Sample:
    rss_kb, fds, threads = 0, 0, 0
    for pid in load.process_tree(server.pid):
        try:
            rss_kb += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            threads += len(os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:  # a worker that exited since it was listed
            continue
    assert server.metrics_port is not None, "soak.py runs the server with its metrics on"
    metrics = scrape(server.metrics_port)
    return Sample(
        t=t,
        rss_mb=rss_kb / 1024,
        fds=fds,
        threads=threads,
        cpu_s=load.cpu_seconds(server.pid),
        processed=metrics.get("actionstream_frames_processed_total", 0.0),
        dropped=sum(
            v for k, v in metrics.items() if k.startswith("actionstream_frames_dropped_total")
        ),
        active=metrics.get("actionstream_active_streams", 0.0),
    )


def _latency(run: load.CameraRun, start: float, end: float) -> tuple[float, float, int]:
    """p50 and p99 (ms) of the frames captured from `start` to `end` s on the cameras'
    clock, and how many there were."""
    arr = np.array(run.latencies) if run.latencies else np.zeros((0, 2))
    # The first second is connection set-up, as in load.py.
    chosen = arr[(arr[:, 0] >= max(start, 1.0)) & (arr[:, 0] < end), 1]
    if not len(chosen):
        return float("nan"), float("nan"), 0
    p50, p99 = np.percentile(chosen, [50, 99])
    return float(p50), float(p99), len(chosen)


def soak(args: argparse.Namespace, cameras: load.Cameras) -> None:
    seconds = args.minutes * 60
    with tempfile.TemporaryFile("w+") as log, ServeProcess(log, args=args.server_arg) as server:
        time.sleep(2)  # past start-up's own allocations
        before = sample(server, -1.0)
        print(
            f"server pid {server.pid}; at rest {before.rss_mb:.1f} MB, {before.fds} fds, "
            f"{before.threads} threads"
        )
        runs: list[load.CameraRun] = []
        swarm = threading.Thread(
            target=lambda: runs.append(cameras(server.target, args.cameras, args.fps, seconds)),
            daemon=True,  # a crashed swarm must not keep the bench alive
        )
        clock = time.time() + 1.0  # both swarms start their clock a second after they start
        swarm.start()
        print(
            f"{'t s':>6} {'RSS MB':>7} {'fds':>5} {'threads':>7} {'CPU ms/frame':>12} "
            f"{'answered':>8} {'dropped':>7} {'streams':>7}"
        )
        samples = [before]
        while swarm.is_alive():
            swarm.join(timeout=max(0.0, clock + len(samples) * args.every - time.time()))
            if swarm.is_alive():
                samples.append(_report(samples[-1], sample(server, time.time() - clock)))
        if not runs:
            raise SystemExit("soak.py: the cameras failed (their error is above)")
        end = sample(server, time.time() - clock)
        samples.append(_report(samples[-1], end))
        time.sleep(args.settle)
        settled = sample(server, time.time() - clock)
        stopping = time.monotonic()
        code = server.stop(timeout=60)
        stop_s = time.monotonic() - stopping
    _summary(args, runs[0], samples, settled, code, stop_s)


def _report(previous: Sample, now: Sample) -> Sample:
    answered = now.processed - previous.processed
    cpu_ms = (now.cpu_s - previous.cpu_s) / answered * 1e3 if answered else float("nan")
    print(
        f"{now.t:6.0f} {now.rss_mb:7.1f} {now.fds:5d} {now.threads:7d} {cpu_ms:12.3f} "
        f"{answered:8.0f} {now.dropped - previous.dropped:7.0f} {now.active:7.0f}",
        flush=True,
    )
    return now


def _summary(
    args: argparse.Namespace,
    run: load.CameraRun,
    samples: list[Sample],
    settled: Sample,
    code: int,
    stop_s: float,
) -> None:
    before, during = samples[0], samples[1:]
    seconds = args.minutes * 60
    # On the cameras' own clock (capture time): a sample's time is only near it.
    print("\nlatency by capture time (capture -> prediction, from the cameras' log):")
    print(f"{'from s':>6} {'to s':>6} {'frames':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for start in np.arange(0.0, seconds, args.every):
        stop = min(start + args.every, seconds)
        p50, p99, frames = _latency(run, start, stop)
        print(f"{start:6.0f} {stop:6.0f} {frames:7d} {p50:7.1f} {p99:7.1f}")
    print(f"\n{run.answered:,} of {run.scheduled:,} frames answered, {run.skipped:,} skipped")
    # Halves, not intervals: one interval's p99 moves with the machine's pace from
    # minute to minute; a server falling behind moves the whole second half.
    _, p99_first, _ = _latency(run, 0.0, seconds / 2)
    _, p99_second, _ = _latency(run, seconds / 2, seconds)
    print(
        f"p99, second half / first: {p99_second:.1f} / {p99_first:.1f} ms = "
        f"{p99_second / p99_first:.2f}x"
    )
    # The first interval holds the cameras' connecting, the last their leaving.
    steady = during[1:-1]
    if len(steady) >= 3:
        middle = next(k for k, s in enumerate(steady) if s.t >= steady[-1].t / 2)
        first, second = (
            (b.cpu_s - a.cpu_s) / (b.processed - a.processed) * 1e3
            for a, b in ((during[0], steady[middle]), (steady[middle], steady[-1]))
        )
        print(
            f"CPU a frame, second half / first: {second:.3f} / {first:.3f} ms = "
            f"{second / first:.2f}x"
        )
    half = [s for s in steady if s.t >= steady[-1].t / 2] if steady else []
    if len(half) >= 4:
        hours = np.array([s.t for s in half]) / 3600
        slope = np.polyfit(hours, [s.rss_mb for s in half], 1)[0]
        print(
            f"resident memory over the second half ({half[0].t:.0f}-{half[-1].t:.0f} s): "
            f"{slope:+.1f} MB an hour ({min(s.rss_mb for s in half):.1f}-"
            f"{max(s.rss_mb for s in half):.1f} MB)"
        )
    else:
        print("too few samples for a slope of resident memory (4 in the second half needed)")
    print(
        f"{args.settle:g} s after the cameras left: {settled.active:.0f} streams open, "
        f"{settled.rss_mb:.1f} MB ({settled.rss_mb - before.rss_mb:+.1f} since at rest), "
        f"{settled.fds} fds ({settled.fds - before.fds:+d}), "
        f"{settled.threads} threads ({settled.threads - before.threads:+d})"
    )
    print(f"SIGTERM: exit code {code} after {stop_s:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", type=int, default=60, help="cameras for the whole run")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the cameras send")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds after the cameras stop, then sampled"
    )
    load.add_server_args(parser)
    args = parser.parse_args()
    if args.cameras < 1 or args.fps <= 0 or args.minutes <= 0 or args.every <= 0:
        parser.error(
            f"--cameras, --fps, --minutes and --every must be above 0, got {args.cameras} "
            f"{args.fps:g} {args.minutes:g} {args.every:g}"
        )
    if args.settle < 0:
        parser.error(f"--settle must be 0 or more, got {args.settle:g}")
    jpegs = load.render_frames()
    print(
        f"{args.cameras} cameras, {load.WIDTH}x{load.HEIGHT} JPEG at {args.fps:g} fps, for "
        f"{args.minutes:g} min, sampled every {args.every:g} s"
    )
    with tempfile.TemporaryDirectory() as clip_dir:
        try:
            soak(args, load.choose_cameras(args.swarm, jpegs, Path(clip_dir)))
        except ServeProcessError as e:  # the server's own line: a port in use, a bad model
            raise SystemExit(f"soak.py: {e}") from None


if __name__ == "__main__":
    main()
