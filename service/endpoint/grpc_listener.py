"""Which of gRPC core's listeners accepts and reads the server's connections.

grpcio 1.85 reads a server's connections on its EventEngine, a pool of threads
of its own: each message read there is handed to the thread that polls for
grpc.aio's event loop, which then wakes the loop. gRPC's older listener (iomgr)
reads on that polling thread itself, so a message wakes one thread fewer, and
the server spends less CPU a frame (measured in docs/design.md, "gRPC reads on
the thread that polls for the loop").

gRPC reads its experiments (GRPC_EXPERIMENTS: names separated by commas, a
leading "-" turning one off, the last mention winning) once, as it loads. So
the choice is made in the environment before anything imports grpc, and the
processes the server starts inherit it. An operator's GRPC_EXPERIMENTS that
names the experiment decides instead: `event_engine_listener` keeps gRPC's
default.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

VARIABLE = "GRPC_EXPERIMENTS"
EXPERIMENT = "event_engine_listener"


def _names(environ: Mapping[str, str]) -> list[str]:
    return [name.strip() for name in environ.get(VARIABLE, "").split(",") if name.strip()]


def _mentions(environ: Mapping[str, str]) -> list[str]:
    """The experiment's mentions in GRPC_EXPERIMENTS, in order, each "on" or "off"."""
    return [
        "off" if name.startswith("-") else "on"
        for name in _names(environ)
        if name.removeprefix("-") == EXPERIMENT
    ]


def prefer_iomgr(environ: MutableMapping[str, str]) -> None:
    """Turns gRPC's EventEngine listener off in `environ`, unless its GRPC_EXPERIMENTS
    already names that experiment either way."""
    if not _mentions(environ):
        environ[VARIABLE] = ",".join([*_names(environ), f"-{EXPERIMENT}"])


def listener(environ: Mapping[str, str]) -> str:
    """The listener `environ` asks gRPC for ("iomgr" or "EventEngine"). What it asks, not
    what gRPC did: a grpcio without the experiment logs "Unknown experiment" and keeps
    its own (tests/test_grpc_listener.py checks gRPC's own trace)."""
    mentions = _mentions(environ)
    return "iomgr" if mentions and mentions[-1] == "off" else "EventEngine"
