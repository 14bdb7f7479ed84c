"""Log lines: client strings escaped and bounded, camera secrets hidden; JSON lines carry
the stream's name and id."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import grpc
import pytest
from background import BackgroundServer
from helpers import LiveStream, MjpegCamera, frame_request, jpeg, render, stub_for

from actionstream.service.clients.stream import stream_source
from actionstream.service.config import StreamConfig
from actionstream.service.credentials import hide_credentials
from actionstream.service.telemetry.logs import JsonFormatter, Throttle
from actionstream.service.text import NAME_LIMIT, printable
from actionstream.v1 import actionstream_pb2 as pb

SECRET = "s3cret-pw"


def test_printable_escapes_and_bounds_client_strings() -> None:
    assert printable("loading-dock-cam-2") == "loading-dock-cam-2"
    assert printable("cam\nINFO forged") == "cam\\nINFO forged"
    # A backslash is escaped too: a name of the two characters \n is not a newline's.
    assert printable("cam\\nINFO forged") == "cam\\\\nINFO forged"
    assert printable("cam\\nINFO") != printable("cam\nINFO")
    assert printable("\x1b[31mred") == "\\x1b[31mred"
    long = printable("x" * 8_000_000)
    assert long == "x" * NAME_LIMIT + "…"


def test_json_lines_carry_the_stream() -> None:
    record = logging.LogRecord(
        "actionstream.service.endpoint.call_end",
        logging.INFO,
        __file__,
        1,
        "stream %d %s opened",
        (7, "cam\\n2"),
        None,
    )
    record.stream, record.stream_id = "cam\\n2", 7
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["message"] == "stream 7 cam\\n2 opened"
    assert (fields["stream"], fields["stream_id"], fields["level"]) == ("cam\\n2", 7, "INFO")
    assert fields["time"].endswith("Z")


def test_camera_secrets_stay_out_of_logs_and_statuses(
    start_server: Callable[..., BackgroundServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Cameras take their passwords in their URLs, and clients name streams by them; the
    server logs names and quotes sources in its errors, seen by operators and clients."""
    server = start_server(allow_sources=True)
    stub = stub_for(server.port)
    named = f"rtsp://admin:{SECRET}@camera.example/live?channel=1"
    with caplog.at_level(logging.INFO, logger="actionstream"):
        stream = LiveStream(stub, pb.StreamOptions(stream_name=named))
        stream.send(frame_request(jpeg(render(1, seed=0)[0])))
        assert stream.close() == []
        # Nothing listens on port 1 of the loopback: the open fails at once.
        for source in (
            f"rtsp://admin:{SECRET}@127.0.0.1:1/live",
            f"http://127.0.0.1:1/video.mjpg?user=admin&pwd={SECRET}",
        ):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.WatchSource(pb.SourceRequest(source=source)))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            details = refused.value.details()
            assert "127.0.0.1:1" in details and SECRET not in details, details
        # The stream client names its stream after its source, hidden before it leaves.
        camera = MjpegCamera(list(render(3, seed=1)))
        try:
            url = camera.url.replace("http://", f"http://admin:{SECRET}@")
            cfg = StreamConfig(source=url, target=f"127.0.0.1:{server.port}", max_frames=2)
            assert stream_source(cfg).frames_answered >= 1  # see MjpegCamera
        finally:
            camera.close()
    assert "rtsp://***@camera.example/live?channel=1 opened" in caplog.text
    assert "rtsp://***@127.0.0.1:1/live" in caplog.text
    assert "video.mjpg?user=admin&pwd=*** " in caplog.text
    assert f"http://***@127.0.0.1:{camera.url.split(':')[2]}" in caplog.text
    assert SECRET not in caplog.text


def test_hiding_secrets_keeps_the_rest_of_the_url() -> None:
    cases = {
        "rtsp://admin:p@ss@cam:554/live?channel=1": "rtsp://***@cam:554/live?channel=1",
        "https://TOKEN@cam/x#y": "https://***@cam/x#y",
        "http://cam/v.mjpg?user=admin&pwd=pw&fps=10": "http://cam/v.mjpg?user=admin&pwd=***&fps=10",
        "http://cam/v?access_token=a;apiKey=b#Password=c": "http://cam/v?access_token=***;apiKey=***#Password=c",
        "rtsp://cam/path@x?password=": "rtsp://cam/path@x?password=***",
        # Cameras' own short names: Foscam's loginpas, pw, p, pin.
        "http://cam/a?loginuse=admin&loginpas=x&pw=y&P=z&pin=1&channel=2": (
            "http://cam/a?loginuse=admin&loginpas=***&pw=***&P=***&pin=***&channel=2"
        ),
        "/videos/a@b?pwd=c.avi": "/videos/a@b?pwd=c.avi",  # a path, not a URL
        "0": "0",
    }
    assert {url: hide_credentials(url) for url in cases} == cases
    # Looked at only so far (a client may send megabytes), and hidden whole where its user
    # information may run past that.
    token = "eyJhbGciOiJSUzI1NiJ9." + "x" * 5000
    assert hide_credentials(f"https://{token}@cam/live", limit=4096) == "https://***"
    assert hide_credentials("rtsp://cam/live?pw=" + "y" * 5000, limit=4096) == (
        "rtsp://cam/live?pw=***"
    )


def test_a_flood_of_refusals_is_logged_a_line_a_second_saying_what_it_left_out() -> None:
    # Cameras retrying against a full server would fill the log with one line each.
    throttle = Throttle(per_second=5)
    assert throttle.take() == 0
    assert [throttle.take() for _ in range(3)] == [None, None, None]
    time.sleep(0.25)
    assert throttle.take() == 3
    assert throttle.take() is None


def test_stream_lines_come_in_bursts_then_at_a_rate_saying_what_they_left_out() -> None:
    # 6,000 one-frame streams a client opened and closed at 644 a second wrote 250 KB of
    # "opened" and "ended" lines a second; cameras reconnecting together after a restart
    # must all still be logged.
    throttle = Throttle(per_second=10, burst=5)
    assert [throttle.take() for _ in range(5)] == [0] * 5
    assert [throttle.take() for _ in range(7)] == [None] * 7
    time.sleep(0.25)  # two lines' worth
    assert [throttle.take() for _ in range(3)] == [7, 0, None]
