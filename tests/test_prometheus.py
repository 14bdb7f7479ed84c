"""A real Prometheus scrapes a real server; the shipped config and alerts are valid, and the
overload and full alerts fire on what an overloaded or a full server exports.

Needs Debian's `prometheus` package (`make test` installs it where it can).
Without it these tests are skipped, except in CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from background import BackgroundServer
from helpers import LiveStream, frame_request, jpeg, render
from prometheus_client import CollectorRegistry

from actionstream.service.clients.scrape import scrape
from actionstream.service.config import ServeConfig
from actionstream.service.telemetry.metrics import Metrics
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; `make test` installs Debian's prometheus")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def test_shipped_config_and_alerts_are_valid() -> None:
    promtool = _tool("promtool")
    check = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rules = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Starts Prometheus scraping 127.0.0.1:PORT every second; yields its query URL."""
    binary = _tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: actionstream\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
        )
        web = f"127.0.0.1:{_free_port()}"
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address={web}",
                ],
                stdout=log,
                stderr=log,
            )
        )
        return f"http://{web}/api/v1/query"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def _query(url: str, expr: str) -> list[dict]:
    try:
        with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode({'query': expr})}") as r:
            result: list[dict] = json.load(r)["data"]["result"]
            return result
    except OSError:
        return []  # Prometheus not listening yet


def _poll(url: str, expr: str, done: Callable[[list[dict]], bool]) -> list[dict]:
    deadline = time.monotonic() + 45
    result = _query(url, expr)
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.5)
        result = _query(url, expr)
    return result


def test_latencies_of_seconds_are_told_apart() -> None:
    # Streams of frames far larger than the model's input wait seconds for the heavy lane.
    # A histogram that ended at 2.5 s read every such p99 as 2.5 s, in the alert too.
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for latency in [0.01] + [3.4] * 99:
        metrics.frame_latency.observe(latency)
    counts = {
        sample.labels["le"]: sample.value
        for family in registry.collect()
        if family.name == "actionstream_frame_latency_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }
    assert (counts["2.5"], counts["5.0"]) == (1, 100)
    # A frame waits at most until its stream is ended idle; the buckets reach that far.
    assert max(float(le) for le in counts if le != "+Inf") >= ServeConfig().idle_timeout_seconds


@pytest.mark.slow
def test_prometheus_scrapes_what_the_server_did(
    start_server: Callable[..., BackgroundServer], prometheus: Callable[[int], str]
) -> None:
    server = start_server(metrics_host="127.0.0.1", metrics_port=0)
    assert server.metrics_port is not None
    url = prometheus(server.metrics_port)

    frames = render(12, seed=5)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        requests = [pb.FrameRequest(options=pb.StreamOptions(stream_name="prom"))]
        requests += [frame_request(jpeg(f)) for f in frames]
        answered = list(stub.StreamFrames(iter(requests)))
    assert len(answered) == 12

    processed = _poll(
        url,
        "actionstream_frames_processed_total",
        lambda r: bool(r) and float(r[0]["value"][1]) == 12,
    )
    assert processed and float(processed[0]["value"][1]) == 12, processed
    assert processed[0]["metric"]["job"] == "actionstream"
    up = _query(url, 'up{job="actionstream"}')
    assert float(up[0]["value"][1]) == 1
    latency = _query(url, "actionstream_frame_latency_seconds_count")
    assert float(latency[0]["value"][1]) == 12


def _alert(name: str) -> str:
    """The expression of one shipped alert, as Prometheus would load it."""
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == name]
    return str(expr)


@pytest.mark.slow
def test_the_overload_alert_fires_on_what_an_overloaded_server_exports(
    start_server: Callable[..., BackgroundServer], prometheus: Callable[[int], str]
) -> None:
    # An overloaded server keeps its latency and drops frames instead, so this alert is
    # the one that must see it: its shipped expression, over a real scrape of a real
    # server that drops most of 20 frames. The batcher waits a second before its first
    # batch; by then the frames have arrived, and the stream keeps only its newest two.
    server = start_server(
        metrics_host="127.0.0.1", metrics_port=0, max_batch_wait_ms=1000, queue_frames=2
    )
    assert server.metrics_port is not None
    url = prometheus(server.metrics_port)
    # A scrape from before the drops, so that rate() sees them happen.
    before = _poll(url, 'actionstream_frames_dropped_total{reason="overload"}', lambda r: bool(r))
    assert before and float(before[0]["value"][1]) == 0, before

    frames = [jpeg(f) for f in render(20, seed=30)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        answered = list(stub.StreamFrames(iter([frame_request(f) for f in frames])))
    # Frames that arrive after the first batch has started are answered too: count them.
    counts = scrape(server.metrics_port)
    dropped = counts["actionstream_frames_dropped_total{reason=overload}"]
    assert counts["actionstream_frames_processed_total"] == len(answered)
    assert dropped + len(answered) == 20 and dropped >= 10, counts
    share = dropped / 20

    # Until a scrape from after the stream's end (one in between may have seen fewer).
    firing = _poll(
        url,
        _alert("ActionstreamOverloaded"),
        lambda r: bool(r) and float(r[0]["value"][1]) == pytest.approx(share, abs=0.01),
    )
    assert firing, "the alert's expression found nothing to fire on"
    assert firing[0]["metric"] == {"instance": f"127.0.0.1:{server.metrics_port}"}
    assert float(firing[0]["value"][1]) == pytest.approx(share, abs=0.01)


@pytest.mark.slow
def test_the_full_alert_fires_on_what_a_full_server_exports(
    start_server: Callable[..., BackgroundServer], prometheus: Callable[[int], str]
) -> None:
    # One place, taken: the next camera is turned away, and the shipped expression over a
    # real scrape of the server sees it.
    server = start_server(metrics_host="127.0.0.1", metrics_port=0, max_streams=1)
    assert server.metrics_port is not None
    url = prometheus(server.metrics_port)
    before = _poll(url, "actionstream_active_streams", lambda r: bool(r))
    assert before and float(before[0]["value"][1]) == 0, before

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        holder = LiveStream(stub, pb.StreamOptions(stream_name="holder"))
        holder.send(frame_request(jpeg(render(1, seed=31)[0])))
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.StreamFrames(iter([frame_request(jpeg(render(1, seed=32)[0]))])))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        firing = _poll(url, _alert("ActionstreamFull"), lambda r: bool(r))
        holder.close()
    assert firing, "the alert's expression found nothing to fire on"
    assert firing[0]["metric"] == {"instance": f"127.0.0.1:{server.metrics_port}"}
    assert float(firing[0]["value"][1]) > 0
