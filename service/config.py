"""The service's settings: `serve`'s, the `stream` and `watch` clients' and `health`'s,
a frozen dataclass each.

`actionstream serve` turns each ServeConfig field into `--field-name` and
reads `ACTIONSTREAM_FIELD_NAME` from the environment (actionstream/command.py),
so the help text here is the user's manual. The module imports nothing heavy,
so the command line builds its flags without loading OpenCV, onnxruntime or
gRPC (which `serve` configures before it loads: service/endpoint/grpc_listener.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from actionstream.service.sources.allowlist import SourceAllowlist
from actionstream.settings import refuse_non_finite, refuse_out_of_range, setting

# How the server writes its log lines (service/telemetry/logs.py).
LogFormat = Literal["text", "json"]
# What reads the clients' connections (service/endpoint/grpc_listener.py).
Listener = Literal["eventengine", "iomgr"]
LISTENERS: tuple[Listener, ...] = ("eventengine", "iomgr")

# The longest connection age gRPC can take: (2**31 - 1) ms, about 24 days.
_MAX_CONNECTION_AGE_S = 2_147_483.0
# More labels than any model here has; above it a top-k is a typo (and past 2**32, a
# value the protobuf field cannot hold).
MAX_TOP_K = 1000
# `serve` reads each setting from ACTIONSTREAM_<SETTING> too; `health` its address.
ENV_PREFIX = "ACTIONSTREAM_"
# Room for the protobuf framing around a frame's bytes (sequence, timestamp,
# options, raw width/height), so a frame of exactly max_frame_bytes still fits.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# A batch that waits longer than this for more streams would hold a live frame for a second.
MAX_BATCH_WAIT_MS = 1000.0
# Upper bounds on settings that size threads, memory or start-up work: past them a value is
# a typo, and one such (--threads 100000) started a server that made threads until the
# machine stalled, or (--max-batch) would warm every batch size up to it before serving.
# gRPC takes its message limit (max_frame_bytes + MESSAGE_OVERHEAD_BYTES) in a C int.
MAX_FRAME_BYTES = 2**31 - 1 - MESSAGE_OVERHEAD_BYTES
MAX_FRAME_PIXELS = 2**30  # OpenCV's own limit on a decoded image
MAX_THREADS = 64
MAX_BATCH = 256


@dataclass(frozen=True)
class ServeConfig:
    """How `actionstream serve` runs; every field is also an ACTIONSTREAM_* variable."""

    model: str | None = setting(
        None,
        help="ONNX step model to serve; unset (or empty) serves the bundled default model",
        group="Model",
    )
    threads: int = setting(
        1,
        help="onnxruntime intra-op threads; 0 lets it choose (its pool spins on every core: "
        "at 100 cameras on 2 cores it doubled the CPU a frame); 1 leaves the rest to gRPC "
        "and decoding",
        group="Model",
        at_most=MAX_THREADS,
    )
    default_top_k: int = setting(
        3, help="labels per prediction when a stream does not ask", group="Model", at_least=1
    )
    host: str = setting("0.0.0.0", help="gRPC listen address", group="Network")
    port: int = setting(50051, help="gRPC port; 0 picks a free one", group="Network")
    metrics_host: str | None = setting(
        None,
        help="listen address of the Prometheus /metrics endpoint; unset: same as --host",
        group="Network",
    )
    # Not Prometheus's own 9090: the two often share a host (or a pod's network).
    metrics_port: int = setting(
        9464,
        help="port of the Prometheus /metrics endpoint; 0 picks a free one, -1 turns it off",
        group="Network",
    )
    grpc_listener: Listener = setting(
        "eventengine",
        help="what reads the clients' connections: eventengine (gRPC's default: threads of "
        "its own) or iomgr (the thread that polls for the event loop). iomgr costs less CPU "
        "a frame (5% with 2 workers at 100 cameras here, which it held within p99 100 ms on "
        "2 cores in 17 runs of 20 against 6), but two connections flooding HTTP/2 PING "
        "frames stalled every stream under it for as long as they sent: only where every "
        "client is trusted",
        group="Network",
    )
    max_streams: int = setting(
        64,
        help="concurrent streams (StreamFrames + WatchSource); more get RESOURCE_EXHAUSTED",
        group="Limits",
        at_least=1,
    )
    max_streams_per_address: int = setting(
        0,
        help="streams one client address may hold at once, of max_streams (so that one host "
        "cannot take them all); more get RESOURCE_EXHAUSTED; 0: no such limit. Cameras behind "
        "one NAT or proxy share its address. With --workers, each process counts its own",
        group="Limits",
    )
    max_waiting_calls: int | None = setting(
        None,
        help="StreamFrames calls that have sent no frame yet (they hold no place, but memory: "
        "about 25 KB each); a call that opens beyond this ends the one waiting longest "
        "(RESOURCE_EXHAUSTED); unset: 4 x max_streams, so that cameras reconnecting all at "
        "once are not cut. As many calls of GetModelInfo, WatchSource and health Check and "
        "Watch may wait for their request, with the same rule",
        group="Limits",
        at_least=1,
    )
    max_connections: int | None = setting(
        None,
        help="client connections open at once (a camera's stream holds one); one beyond "
        "this is closed before any call, and its client gets UNAVAILABLE; unset: 4 x "
        "max_streams, at least 1024. It keeps a flood of connections from taking the "
        "process's file descriptors and memory (20,000 held 380 MB, and no new camera "
        "could connect); a connection with no call open for 60 s is closed (its client's "
        "next call connects again), and one that says nothing for 10 s. With --workers, "
        "each worker holds its share, as of max_streams",
        group="Limits",
    )
    max_side_calls: int = setting(
        64,
        help="health Watch and reflection calls open at once (each stays open as long as its "
        "client likes and holds about 20 KB); beyond this a new one gets RESOURCE_EXHAUSTED. "
        "Cameras and health Check are not counted",
        group="Limits",
        at_least=1,
    )
    max_frame_bytes: int = setting(
        8 * 1024 * 1024,
        help="largest frame payload (encoded image or raw pixels) in bytes; "
        "larger frames get RESOURCE_EXHAUSTED (gRPC's own message limit, which its message "
        "quotes, is 64 KiB above it, for the rest of the request); a raw 3840x2160 frame is "
        "24.9 MB, so raw frames that large need this raised",
        group="Limits",
        at_least=1,
        at_most=MAX_FRAME_BYTES,
    )
    max_frame_pixels: int = setting(
        3840 * 2160,
        help="largest frame in pixels (width*height), checked before decoding; "
        "larger frames get INVALID_ARGUMENT",
        group="Limits",
        at_least=1,
        at_most=MAX_FRAME_PIXELS,
    )
    max_batch: int = setting(
        16,
        help="most streams stepped together in one batched model step",
        group="Real time",
        at_least=1,
        at_most=MAX_BATCH,
    )
    max_batch_wait_ms: float = setting(
        2.0,
        help="how long an idle batcher waits for more streams to join a batch, in ms: "
        "latency bought for fewer, wider steps",
        group="Real time",
    )
    decode_threads: int = setting(
        2,
        help="batch threads (one per core suits most machines): a batch's frames are decoded "
        "on all that are free, and once a full batch waits, a second batch runs beside the "
        "first",
        group="Real time",
        at_least=1,
        at_most=MAX_THREADS,
    )
    jpeg_floor: float = setting(
        0.875,
        help="a JPEG larger than the model is decoded by libjpeg at 1/2, 1/4 or 1/8 scale, the "
        "smallest that leaves this share of the model's input size, then resized: 0.875 "
        "decodes a 640x480 frame for a 64x64 model at 1/8 (28% less CPU than 1/4, the "
        "image a little softer); 1.0 never enlarges after a reduced decode",
        group="Real time",
    )
    inference_nice: int = setting(
        5,
        help="CPU niceness the decode and model threads take on top of the server's own "
        "(0-19, Linux): above 0, reading "
        "and answering streams go first when the cores are full, so an overloaded server "
        "drops frames instead of falling behind; 0 weighs them all alike",
        group="Real time",
    )
    queue_frames: int = setting(
        1,
        help="frames a stream may have waiting for inference; a new one beyond that drops "
        "the oldest (counted, and reported in the next prediction)",
        group="Real time",
        at_least=1,
    )
    heavy_pixels: int = setting(
        1920 * 1080,
        help="frames whose decoding costs more than a JPEG of this many pixels (a JPEG "
        "counts its full size at any decode scale, a progressive one times half its scans, "
        "one of more than 8 bits a pixel its bytes, an arithmetic-coded one 48 pixels a byte; "
        "a PNG eight times its pixels) "
        "go to a lane of their own, limited to a quarter of one core, so that they cannot "
        "hold up other streams",
        group="Real time",
        at_least=1,
    )
    idle_timeout_seconds: float = setting(
        30.0,
        help="a stream that sends no frame, or takes no prediction, this long ends "
        "(DEADLINE_EXCEEDED); so does a call of GetModelInfo, WatchSource or health Check "
        "or Watch that sends no request",
        group="Real time",
    )
    workers: int = setting(
        1,
        help="server processes sharing the gRPC port (SO_REUSEPORT, Linux): one Python process "
        "runs its gRPC and decoding under one lock, so it leaves other cores idle; each "
        "process batches only its own streams and takes its share of max_streams (they "
        "differ by one at most)",
        group="Operation",
        at_least=1,
    )
    max_connection_age_seconds: float = setting(
        0.0,
        help="after this long a client connection is asked to move on (HTTP/2 GOAWAY): its "
        "open streams go on undisturbed, its new streams take a new connection, which a "
        "client balancing over pods' addresses may open to a newer pod; 0: never",
        group="Operation",
    )
    grace_seconds: float = setting(
        5.0,
        help="on SIGTERM/SIGINT, how long open streams may finish before they are cut",
        group="Operation",
    )
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR", group="Operation")
    log_format: LogFormat = setting(
        "text",
        help="text, or json: one JSON object a line, with the stream's name and id as keys",
        group="Operation",
    )
    allow_sources: bool = setting(
        False,
        help="enable WatchSource, which lets any client make the server open files, "
        "cameras and URLs; only on trusted networks",
        group="Operation",
    )
    source_allowlist: str | None = setting(
        None,
        help="with --allow-sources, what WatchSource may open, comma-separated: absolute "
        "folders (files inside them), URL prefixes (scheme://host[:port][/path]) and camera "
        "indexes; others get PERMISSION_DENIED. Unset: anything the server can reach",
        group="Operation",
    )
    ready_file: str | None = setting(
        None,
        help="once serving, write the bound ports here as JSON "
        '({"port": ..., "metrics_port": ... or null, "pid": ..., "model": ..., and with '
        '--workers their "workers" pids), for scripts and tests; removed at exit',
        group="Operation",
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        refuse_out_of_range(self)
        if self.source_allowlist is not None:
            if not self.allow_sources:
                raise ValueError(
                    "source_allowlist narrows what WatchSource opens, which is off: "
                    "set allow_sources too"
                )
            SourceAllowlist.parse(self.source_allowlist)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free one), got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"metrics_port must be 0..65535 (0 picks a free one) or -1 (off), "
                f"got {self.metrics_port}"
            )
        if self.max_streams_per_address < 0:
            raise ValueError(
                "max_streams_per_address must be 0 (no limit) or more, "
                f"got {self.max_streams_per_address}"
            )
        if self.max_connections is not None and self.max_connections < self.workers:
            raise ValueError(
                f"max_connections must be at least 1 (and workers: each takes a share), "
                f"got {self.max_connections}"
            )
        if self.max_streams < self.workers:
            raise ValueError(
                f"max_streams ({self.max_streams}) must be at least workers ({self.workers}): "
                "each worker takes a share of the streams"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (automatic) or more, got {self.threads}")
        if not 0 <= self.max_batch_wait_ms <= MAX_BATCH_WAIT_MS:
            # Every frame of a lone stream waits this long before its step.
            raise ValueError(
                f"max_batch_wait_ms must be 0..{MAX_BATCH_WAIT_MS:g}, got {self.max_batch_wait_ms}"
            )
        if not 0 < self.jpeg_floor <= 1:
            raise ValueError(f"jpeg_floor must be above 0 and at most 1, got {self.jpeg_floor}")
        if not 0 <= self.inference_nice <= 19:
            raise ValueError(f"inference_nice must be 0..19, got {self.inference_nice}")
        if self.idle_timeout_seconds <= 0:
            raise ValueError(
                f"idle_timeout_seconds must be positive, got {self.idle_timeout_seconds}"
            )
        # Any case, as log_level: JSON is json.
        object.__setattr__(self, "log_format", self.log_format.lower())
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        # gRPC takes milliseconds in a C int; under a second, streams would barely open.
        if self.max_connection_age_seconds and not (
            1 <= self.max_connection_age_seconds <= _MAX_CONNECTION_AGE_S
        ):
            raise ValueError(
                "max_connection_age_seconds must be 0 (never) or from 1 to "
                f"{_MAX_CONNECTION_AGE_S:g}, got {self.max_connection_age_seconds}"
            )
        object.__setattr__(self, "grpc_listener", self.grpc_listener.lower())
        if self.grpc_listener not in LISTENERS:
            raise ValueError(
                f"grpc_listener must be {' or '.join(LISTENERS)}, got {self.grpc_listener!r}"
            )
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must not be negative, got {self.grace_seconds}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(
                f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )

    @property
    def metrics_address(self) -> str:
        return self.host if self.metrics_host is None else self.metrics_host

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0

    @property
    def waiting_calls_cap(self) -> int:
        """How many calls may wait for a first frame: as set, or four per place."""
        return self.max_waiting_calls or 4 * self.max_streams

    @property
    def connections_cap(self) -> int:
        """How many client connections may be open: as set, or four per place, at least
        1024 (a connection costs about 14 KB; a camera holds one)."""
        return self.max_connections or max(1024, 4 * self.max_streams)

    @property
    def max_message_bytes(self) -> int:
        """gRPC's receive limit: anything larger is refused before it reaches the servicer."""
        return self.max_frame_bytes + MESSAGE_OVERHEAD_BYTES


# gRPC's own target forms (its name resolvers), taken as they are: dns:///host:port,
# unix:/path, xds:///service, ...
_TARGET_SCHEMES = (
    "dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:", "passthrough:",
    "google-c2p:",
)  # fmt: skip


def check_top_k(top_k: int) -> None:
    if not 0 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be 0 (the server's default) to {MAX_TOP_K}, got {top_k}")


def check_target(target: str) -> None:
    """Refuses a server address that gRPC would take another way than meant: HOST
    without a port (gRPC dials 443), a bare IPv6 address, a port out of range."""
    if target.lower().startswith(_TARGET_SCHEMES):
        return
    host, colon, port = target.rpartition(":")
    example = "e.g. 127.0.0.1:50051, [::1]:50051 or dns:///name:50051"
    if not colon or not host or not port.isdigit() or not port.isascii():
        raise ValueError(f"target must be HOST:PORT ({example}), got {target!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 target needs brackets ({example}), got {target!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"target port must be 1..65535, got {target!r}")


@dataclass(frozen=True)
class StreamConfig:
    """What `actionstream stream` sends where, and how."""

    source: str = setting(
        help="video file ('-': one piped in, timed as a file by its own timeline), "
        "camera index (e.g. 0) or stream URL to read frames from"
    )
    target: str = setting("127.0.0.1:50051", help="server address HOST:PORT")
    name: str = setting(
        "",
        help="the stream's name in the server's logs; empty: the source as given (a "
        "URL's password hidden)",
    )
    labels: str | None = setting(
        None,
        help="CSV of ground truth per source frame (frame,label, from 0) to score against; "
        "refused before streaming if it names a label the model lacks; frames of a file "
        "it leaves unlabelled are warned of, and not scored",
    )
    realtime: bool = setting(
        True,
        help="send a file at its own pace, as a live camera would (a camera or live "
        "stream is sent as it hands out frames either way); --no-realtime sends as fast as "
        "the server answers, only the frames at the model's rate",
    )
    max_frames: int = setting(0, help="stop after this many frames; 0 sends all")
    jpeg_quality: int = setting(90, help="JPEG quality of the frames sent, 1-100")
    top_k: int = setting(
        0, help="labels per prediction to ask the server for; 0 takes the server's default"
    )
    reconnect_seconds: float = setting(
        30.0,
        help="when the server goes away mid-stream (restart, rollout), keep opening new "
        "calls for this long and go on streaming; 0 ends the stream instead",
    )
    quiet: bool = setting(False, help="print the summary only, not every prediction")
    json: bool = setting(
        False,
        help="print each prediction, then the summary, as one JSON object a line; "
        "errors stay on stderr",
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must be 0 (all) or more, got {self.max_frames}")
        _check_client(self.top_k, self.reconnect_seconds, self.target)


@dataclass(frozen=True)
class WatchConfig:
    """What `actionstream watch` asks a server to watch, and how long to keep at it."""

    source: str = setting(
        help="camera index, video file or stream URL for the server to open itself (its "
        "paths and URLs are the server's, not this machine's)"
    )
    target: str = setting("127.0.0.1:50051", help="server address HOST:PORT")
    top_k: int = setting(
        0, help="labels per prediction to ask the server for; 0 takes the server's default"
    )
    name: str = setting(
        "", help="the stream's name in the server's logs; empty: the source as given"
    )
    max_predictions: int = setting(
        0, help="stop after this many predictions (a live camera never ends); 0: no limit"
    )
    reconnect_seconds: float = setting(
        30.0,
        help="when the server loses a camera or live stream, or goes away itself, after "
        "answering: ask it to watch again for this long; 0 ends the watch instead",
    )
    quiet: bool = setting(False, help="print the summary only, not every prediction")
    json: bool = setting(
        False,
        help="print each prediction, then the summary, as one JSON object a line; "
        "errors stay on stderr",
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if not self.source.strip():
            raise ValueError("source is empty; give a camera index, a video file or a URL")
        if self.max_predictions < 0:
            raise ValueError(
                f"max_predictions must be 0 (no limit) or more, got {self.max_predictions}"
            )
        _check_client(self.top_k, self.reconnect_seconds, self.target)


def _check_client(top_k: int, reconnect_seconds: float, target: str) -> None:
    """The settings `stream` and `watch` share."""
    check_top_k(top_k)
    if not reconnect_seconds >= 0:
        raise ValueError(f"reconnect_seconds must be 0 (never) or more, got {reconnect_seconds}")
    check_target(target)


@dataclass(frozen=True)
class HealthConfig:
    """Which server to ask, and how long to wait."""

    host: str = setting(
        "127.0.0.1",
        help="server address; a listen-on-everything address (0.0.0.0, ::) asks this machine",
    )
    port: int = setting(50051, help="server gRPC port")
    service: str = setting("", help="service to ask about; empty asks about the whole server")
    timeout: float = setting(3.0, help="seconds to wait for the answer")

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    @property
    def target(self) -> str:
        # Read from ACTIONSTREAM_HOST beside the server it checks, the address may be the
        # one the server listens on rather than one to dial.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"
