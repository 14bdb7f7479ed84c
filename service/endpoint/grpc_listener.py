"""Which of gRPC core's listeners reads the server's connections (`--grpc-listener`).

grpcio 1.85 reads a server's connections on its EventEngine, a pool of threads of
its own, by default, and so does the server. gRPC's older listener (iomgr) reads
every connection on the one thread that polls for grpc.aio's event loop: a
message wakes one thread fewer and a frame costs less CPU, but a client flooding
HTTP/2 frames holds that thread, and every other stream with it (docs/design.md,
"gRPC reads connections on threads of its own"). It is for servers whose clients
are all trusted.

gRPC takes the choice from GRPC_EXPERIMENTS (names separated by commas, a
leading "-" turning one off, the last mention winning), which it reads once, as
it loads. So `serve` sets it in its environment before anything imports grpc,
and the processes it starts inherit it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from actionstream.service.config import Listener

VARIABLE = "GRPC_EXPERIMENTS"
EXPERIMENT = "event_engine_listener"


def _names(environ: Mapping[str, str]) -> list[str]:
    return [name.strip() for name in environ.get(VARIABLE, "").split(",") if name.strip()]


def _asked(environ: Mapping[str, str]) -> Listener | None:
    """The listener `environ`'s GRPC_EXPERIMENTS names, or None where it names neither."""
    mentions = [name for name in _names(environ) if name.removeprefix("-") == EXPERIMENT]
    if not mentions:
        return None
    return "iomgr" if mentions[-1].startswith("-") else "eventengine"


def listener(environ: Mapping[str, str]) -> Listener:
    """The listener `environ` asks gRPC for. What it asks, not what gRPC did: a grpcio
    without the experiment logs "Unknown experiment" and keeps its own
    (tests/test_grpc_listener.py checks gRPC's own trace)."""
    return _asked(environ) or "eventengine"


def ask(environ: MutableMapping[str, str], chosen: Listener) -> None:
    """Asks gRPC for the `chosen` listener in `environ`'s GRPC_EXPERIMENTS, keeping the
    other experiments it names. ValueError if it already asks for the other one."""
    asked = _asked(environ)
    if asked is None:
        environ[VARIABLE] = ",".join(
            [*_names(environ), EXPERIMENT if chosen == "eventengine" else f"-{EXPERIMENT}"]
        )
    elif asked != chosen:
        raise ValueError(
            f"{VARIABLE}={environ[VARIABLE]!r} asks gRPC for its {asked} listener, and "
            f"--grpc-listener is {chosen}: choose with --grpc-listener "
            "(ACTIONSTREAM_GRPC_LISTENER) alone"
        )
