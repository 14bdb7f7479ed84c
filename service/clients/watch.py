"""`actionstream watch`: have a server watch a camera, file or URL itself; print what it sees.

The server opens the source (WatchSource, which it allows only under `serve
--allow-sources`) and answers every frame it reads; this client sends nothing and
only listens. A file that ends is done. A camera or live stream the server lost,
and a server that went away, end the call with UNAVAILABLE: once something was
answered, the client asks again for up to --reconnect-seconds, each new call from a
zero state on the server.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from actionstream.service.clients.call_failure import CallFailure
from actionstream.service.clients.output import events_text, prediction_record, print_json, report
from actionstream.service.clients.reconnection import KEEPALIVE, Next, Reconnection
from actionstream.service.clients.termination import Termination, is_stop
from actionstream.service.config import WatchConfig
from actionstream.service.trailers import skipped_in
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

PROG = "actionstream watch"
_CODE = grpc.StatusCode
# While watching again, what may pass besides UNAVAILABLE (which always does, see
# service/clients/reconnection.py): a rebooting camera cannot be opened (NOT_FOUND) or not in
# time (DEADLINE_EXCEEDED); a server mid-rollout is full (RESOURCE_EXHAUSTED). A refusal
# (PERMISSION_DENIED, INVALID_ARGUMENT) would not pass.
_PASSING = frozenset({_CODE.NOT_FOUND, _CODE.DEADLINE_EXCEEDED, _CODE.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class WatchSummary:
    """How one watch went, from the client's side; its counts are named as `stream`'s."""

    frames_answered: int
    reconnects: int  # WatchSource calls after the first that answered, after a loss
    ended: str  # how it ended, in words
    interrupted: bool = False  # stopped with Ctrl-C
    frames_skipped: int = 0  # source frames the server took none of (above the model's rate)


class WatchError(Exception):
    """A watch that failed, in words; `summary` is how it went until then, when some of
    it was answered."""

    def __init__(self, message: str, summary: WatchSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def watch_source(
    cfg: WatchConfig, on_prediction: Callable[[pb.Prediction], None] | None = None
) -> WatchSummary:
    """Has the server at `cfg.target` watch `cfg.source`; raises WatchError."""
    request = pb.SourceRequest(
        source=cfg.source, options=pb.StreamOptions(top_k=cfg.top_k, stream_name=cfg.name)
    )
    answered = watches = skipped = 0
    reconnection = Reconnection(cfg.reconnect_seconds, _PASSING)

    def summary(ended: str, interrupted: bool = False) -> WatchSummary:
        return WatchSummary(answered, max(0, watches - 1), ended, interrupted, skipped)

    call = None
    with grpc.insecure_channel(cfg.target, options=KEEPALIVE) as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        try:
            while True:
                try:
                    call = stub.WatchSource(request)
                    first = True
                    for prediction in call:
                        if first:
                            first = False
                            if reconnection.away:
                                print(
                                    f"{PROG}: watching again; the new call answers (from a "
                                    "zero state)",
                                    file=sys.stderr,
                                    flush=True,
                                )
                            reconnection.back()
                            watches += 1
                        answered += 1
                        skipped += prediction.skipped_frames
                        if on_prediction is not None:
                            on_prediction(prediction)
                        if answered == cfg.max_predictions:
                            call.cancel()
                            return summary(f"stopped after {answered} predictions, as asked")
                    skipped += skipped_in(call.trailing_metadata())
                    return summary("the source ended")
                except grpc.RpcError as e:
                    failure = CallFailure.of(e)
                    skipped += failure.skipped  # a call's end: its trailer counts too
                    outage_line = (
                        f"{PROG}: {failure}; watching again for up to "
                        f"{cfg.reconnect_seconds:g} s (a new call starts from a zero state)"
                    )
                    step = reconnection.after_failure(failure.code, answered > 0, outage_line)
                    if step is Next.FAIL:
                        # A reason is the server's answer: the source it could not open
                        # or lost at once, not a server that is unreachable.
                        raise WatchError(
                            failure.describe(
                                answered > 0 or bool(failure.reason),
                                f"the server at {cfg.target} is unreachable",
                                "the server ended the watch",
                            ),
                            summary(f"the server ended it with {failure.code.name}")
                            if answered
                            else None,
                        ) from None
                    if step is Next.GIVE_UP:
                        raise WatchError(
                            f"could not watch the source again within "
                            f"{cfg.reconnect_seconds:g} s; gave up (last: {failure})",
                            summary("gave up watching again"),
                        ) from None
                    reconnection.wait()
        except (KeyboardInterrupt, RuntimeError) as e:
            if not is_stop(e):
                raise
            if call is not None:
                call.cancel()
            return summary("interrupted", interrupted=True)


def print_prediction(prediction: pb.Prediction) -> None:
    best = prediction.top[0]
    line = (
        f"frame {prediction.sequence:6d}  {best.label:>12s} {best.probability:5.2f}  "
        f"{prediction.latency_seconds * 1e3:6.1f} ms on the server"
    )
    print(line + events_text(prediction), flush=True)


def _print_prediction_json(prediction: pb.Prediction) -> None:
    print_json("prediction", prediction_record(prediction))


def print_summary(summary: WatchSummary) -> None:
    print(f"predictions: {summary.frames_answered}")
    if summary.frames_skipped:
        print(
            f"skipped: {summary.frames_skipped} of the source's frames (above the model's "
            "frame rate, or behind when the server was busy)"
        )
    if summary.reconnects:
        print(
            f"watched again: {summary.reconnects} time(s) after the source or the server "
            "was lost (each new call started from a zero state)"
        )
    # Flushed: a pipe's buffer would hold it back until the process ends.
    print(f"ended: {summary.ended}", flush=True)


def run_watch(cfg: WatchConfig) -> int:
    """`actionstream watch`: 0 when the source ended or max_predictions were answered,
    1 on failure, 130 on Ctrl-C and 143 on SIGTERM (both with the summary)."""
    with Termination(once=True) as stop:
        try:
            return _run_watch(cfg, stop)
        except KeyboardInterrupt:  # while the summary was printed, say
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            return stop.code


def _run_watch(cfg: WatchConfig, stop: Termination) -> int:
    each = _print_prediction_json if cfg.json else print_prediction
    try:
        summary = watch_source(cfg, None if cfg.quiet else each)
    except WatchError as e:
        if e.summary is not None:
            # Every field by its name, in JSON: a watch has nothing to hold back.
            report(e.summary, cfg.json, print_summary, dataclasses.asdict, str(e))
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    report(summary, cfg.json, print_summary, dataclasses.asdict)
    return stop.code if summary.interrupted else 0
