"""Client keepalive pings the README allows are taken by a real server, not punished."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import grpc
import pytest
from background import BackgroundServer
from helpers import frame_request, png, render

from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

# A ping every 6 s, kept up however long nothing else is sent (gRPC's client default
# stops after two), with or without a call open: above the server's 5-s floor, and
# under the 10 s its old floor was, which ended quiet streams after three pings.
PINGING = [
    ("grpc.keepalive_time_ms", 6_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A connection of its own each: channels alike would share one, never idle.
    ("grpc.use_local_subchannel_pool", 1),
]
QUIET_S = 25.0  # four pings


@pytest.mark.slow
def test_a_quiet_stream_and_an_idle_connection_may_ping(server: BackgroundServer) -> None:
    # A camera that sends a frame on motion only, pinging as a Node client might, had its
    # stream ended with RESOURCE_EXHAUSTED ("too_many_pings") after 20 s; a connection
    # with no call open was ended for any ping at all.
    target = f"127.0.0.1:{server.port}"
    frames = [frame_request(png(f)) for f in render(2, seed=3)]
    with (
        grpc.insecure_channel(target, options=PINGING) as quiet,
        grpc.insecure_channel(target, options=PINGING) as idle,
    ):
        pb_grpc.ActionRecognitionStub(idle).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        states: list[grpc.ChannelConnectivity] = []
        idle.subscribe(states.append)

        requests: queue.Queue[pb.FrameRequest | None] = queue.Queue()

        def sent() -> Iterator[pb.FrameRequest]:
            while (request := requests.get()) is not None:
                yield request

        requests.put(frames[0])
        answers = pb_grpc.ActionRecognitionStub(quiet).StreamFrames(sent(), timeout=60)
        first = next(answers)
        time.sleep(QUIET_S)  # nothing sent either way: only the pings
        requests.put(frames[1])
        second = next(answers)
        requests.put(None)
        assert list(answers) == []
    assert (first.sequence, second.sequence) == (1, 2)
    # Connected all along: a GOAWAY would have sent the channel to IDLE.
    assert set(states) == {grpc.ChannelConnectivity.READY}, states
