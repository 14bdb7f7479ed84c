"""The service image under live cameras: what one container holds, and what it costs.

    python bench/container.py [--cameras 8,16,32,48,64,100] [--seconds 10]
                              [--cpus 1,2] [--workers 1] [--memory 512m]

Builds deploy/Dockerfile's service image with the deployment tests' private
engine (tests/deploy_engine.py: a dockerd of its own with host networking
only, a debootstrap base, the wheels installed offline; root, `make
docker-tools`), and runs it as a Kubernetes pod runs it: `--cpus` and
`--memory` are the pod's CPU and memory limits (the CFS quota and the memory
cgroup, as the kubelet sets them). Each level is a fresh container driven by
bench/load.py's cameras from the host over loopback (640×480 JPEG at 10 fps,
open loop; the C++ swarm where it builds) for `--seconds`. For each level it
prints

- frames answered of those due, and capture-to-prediction p50/p99,
- the container's CPU over the run, from its cgroup (all its processes:
  `serve`, its workers, anything else in it): in cores over the span the
  cameras send (setting up before it and answering after it cost little),
  per answered frame, and the share of its CFS periods that the CPU limit
  throttled,
- its memory: at rest (serving, before the first camera) and the peak over
  the run, as the memory cgroup counts it against the limit (page cache
  included), and the anonymous memory of its processes at the end (their
  resident memory less what is mapped from files).

The cameras share the machine's cores with the container: on a 2-core
machine `--cpus 2` is no limit at all and the cameras' CPU is taken from it.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BENCH = Path(__file__).resolve().parent
# The deployment tests' engine and image recipe, so that the bench measures the image
# they test. bench/ is not a package: load.py is imported beside this file.
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

from deploy_engine import Engine, EngineError, build_images  # noqa: E402
from load import Cameras, choose_cameras, percentiles, render_frames  # noqa: E402

from actionstream.service.clients.scrape import scrape  # noqa: E402

MIB = 2**20
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Cgroup:
    """A container's cgroup, v1 (one folder per controller) or v2 (one folder)."""

    cpu: Path  # v1: cpuacct.usage in ns; v2: cpu.stat's usage_usec
    throttle: Path  # cpu.stat: nr_periods, nr_throttled
    memory: Path  # v1: memory.usage_in_bytes / max_usage_in_bytes; v2: current / peak
    v2: bool

    @classmethod
    def of(cls, pid: int) -> Cgroup:
        """The cgroup a process is in, from /proc/PID/cgroup."""
        v1: dict[str, Path] = {}
        unified: str | None = None
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if not controllers:
                unified = path
            for controller in controllers.split(","):
                v1[controller] = Path(path.lstrip("/"))
        if "cpuacct" in v1 and "memory" in v1:
            return cls(
                cpu=CGROUP_ROOT / "cpuacct" / v1["cpuacct"] / "cpuacct.usage",
                throttle=CGROUP_ROOT / "cpu" / v1["cpu"] / "cpu.stat",
                memory=CGROUP_ROOT / "memory" / v1["memory"],
                v2=False,
            )
        if unified is None:
            raise EngineError(f"no cpuacct and memory cgroup, nor a unified one, for pid {pid}")
        folder = CGROUP_ROOT / unified.lstrip("/")
        return cls(cpu=folder / "cpu.stat", throttle=folder / "cpu.stat", memory=folder, v2=True)

    def cpu_seconds(self) -> float:
        if self.v2:
            return _stat(self.cpu)["usage_usec"] / 1e6
        return int(self.cpu.read_text()) / 1e9

    def periods(self) -> tuple[int, int]:
        """CFS periods so far, and how many of them the CPU limit throttled."""
        stat = _stat(self.throttle)
        return stat.get("nr_periods", 0), stat.get("nr_throttled", 0)

    def memory_bytes(self) -> int:
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        return int((self.memory / name).read_text())

    def reset_peak(self) -> None:
        """Starts the peak from now (v1 always allows it; v2 from Linux 6.12)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError):
            (self.memory / name).write_text("0\n" if not self.v2 else "reset\n")

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.memory / name).read_text())

    def rss_bytes(self) -> int:
        """Anonymous memory of the processes in it (no page cache)."""
        stat = _stat(self.memory / "memory.stat")
        return stat["anon"] if self.v2 else stat["total_rss"]


def _stat(path: Path) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in path.open())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Pod:
    """What the container is given, as a pod's limits and environment give it."""

    cpus: float
    memory: str  # docker's --memory, e.g. 512m
    workers: int = 1


@dataclass(frozen=True)
class Running:
    name: str
    port: int
    metrics_port: int
    cgroup: Cgroup

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _serving(target: str, timeout: float) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.contextmanager
def running(engine: Engine, image: str, pod: Pod, name: str) -> Iterator[Running]:
    """The service image in a fresh container under the pod's limits, once SERVING."""
    port, metrics_port = _free_port(), _free_port()
    engine.docker(
        "run", "-d", "--name", name, "--network", "host",
        "--cpus", f"{pod.cpus:g}", "--memory", pod.memory, "--memory-swap", pod.memory,
        "-e", "ACTIONSTREAM_HOST=127.0.0.1",
        "-e", f"ACTIONSTREAM_PORT={port}",
        "-e", f"ACTIONSTREAM_METRICS_PORT={metrics_port}",
        "-e", "ACTIONSTREAM_MAX_STREAMS=1000",  # the bench finds the limit, not the setting
        "-e", f"ACTIONSTREAM_WORKERS={pod.workers}",
        image,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _serving(f"127.0.0.1:{port}", timeout=1.0):
            state = engine.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = engine.docker("logs", name, check=False)
                raise EngineError(f"the container did not serve ({state}):\n{logs.stderr}")
            time.sleep(0.2)
        pid = int(engine.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)
        yield Running(name, port, metrics_port, Cgroup.of(pid))
    finally:
        engine.docker("rm", "-f", name, check=False)


@dataclass(frozen=True)
class Level:
    pod: Pod
    cameras: int
    scheduled: int
    answered: int
    p50_ms: float
    p99_ms: float
    cores: float  # the container's CPU over the run, in cores while the cameras send
    ms_per_frame: float  # the container's CPU per frame it answered
    throttled: float  # share of CFS periods the CPU limit throttled
    rest_mib: float  # cgroup memory once serving, before the cameras
    peak_mib: float  # cgroup memory at its peak over the run
    rss_mib: float  # the processes' anonymous memory at the end

    @property
    def held(self) -> bool:
        return self.answered == self.scheduled


def measure(
    engine: Engine, image: str, pod: Pod, cameras: int, seconds: float, swarm: Cameras, fps: float
) -> Level:
    name = f"actionstream-bench-{cameras}"
    with running(engine, image, pod, name) as box:
        time.sleep(1.0)  # let start-up settle: the rest figure is the server idle
        rest = box.cgroup.memory_bytes()
        box.cgroup.reset_peak()
        before = scrape(box.metrics_port)
        cpu0, (periods0, throttled0) = box.cgroup.cpu_seconds(), box.cgroup.periods()
        run = swarm(box.target, cameras, fps, seconds)
        cpu = box.cgroup.cpu_seconds() - cpu0
        periods, throttled = box.cgroup.periods()
        after = scrape(box.metrics_port)
        peak, rss = box.cgroup.peak_bytes(), box.cgroup.rss_bytes()
    key = "actionstream_frames_processed_total"
    processed = after.get(key, 0.0) - before.get(key, 0.0)
    scheduled = run.scheduled
    p50, p99, *_ = percentiles(run.latencies, seconds)
    return Level(
        pod=pod,
        cameras=cameras,
        scheduled=scheduled,
        answered=run.answered,
        p50_ms=p50,
        p99_ms=p99,
        # Over the cameras' clock: connecting before it and draining after cost little.
        cores=cpu / seconds,
        ms_per_frame=cpu / max(1.0, processed) * 1e3,
        throttled=(throttled - throttled0) / max(1, periods - periods0),
        rest_mib=rest / MIB,
        peak_mib=peak / MIB,
        rss_mib=rss / MIB,
    )


HEADER = (
    f"{'cpus':>4} {'workers':>7} {'N':>4} {'answered':>15} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'cores':>5} {'ms/frame':>8} {'throttled':>9} {'rest MiB':>8} {'peak MiB':>8} "
    f"{'rss MiB':>7}"
)


def row(lv: Level) -> str:
    answered = f"{lv.answered}/{lv.scheduled}"
    return (
        f"{lv.pod.cpus:>4g} {lv.pod.workers:>7} {lv.cameras:>4} {answered:>15} "
        f"{lv.p50_ms:>7.1f} {lv.p99_ms:>7.1f} {lv.cores:>5.2f} {lv.ms_per_frame:>8.2f} "
        f"{lv.throttled:>8.0%} {lv.rest_mib:>8.0f} {lv.peak_mib:>8.0f} {lv.rss_mib:>7.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", default="8,16,32,48,64,100", help="N to try")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--cpus", default="1,2", help="CPU limits to try (docker --cpus)")
    parser.add_argument("--workers", default="1", help="ACTIONSTREAM_WORKERS values to try")
    parser.add_argument("--memory", default="512m", help="memory limit (docker --memory)")
    parser.add_argument("--swarm", choices=("auto", "cpp", "python"), default="auto")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.cameras.split(",")]
        pods = [
            Pod(float(c), args.memory, int(w))
            for c in args.cpus.split(",")
            for w in args.workers.split(",")
        ]
    except ValueError as e:
        parser.error(str(e))

    jpegs = render_frames()
    with Engine() as engine, tempfile.TemporaryDirectory() as clip_dir:
        image = build_images(engine, "actionstream-bench", train=False).service
        swarm = choose_cameras(args.swarm, jpegs, Path(clip_dir))
        print(f"memory limit {args.memory}; {args.fps:g} fps a camera, {args.seconds:g} s a level")
        print(HEADER, flush=True)
        for pod in pods:
            held = []
            for n in counts:
                lv = measure(engine, image, pod, n, args.seconds, swarm, args.fps)
                print(row(lv), flush=True)
                if lv.held:
                    held.append(n)
            print(
                f"--cpus {pod.cpus:g}, {pod.workers} worker(s): largest N held with nothing "
                f"dropped: {max(held) if held else 'none'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
