"""Which of gRPC core's listeners accepts and reads the server's connections.

grpcio 1.85 reads a server's connections on its EventEngine, a pool of threads
of its own: each message read there is handed to the thread that polls for
grpc.aio's event loop, which then wakes the loop. gRPC's older listener (iomgr)
reads on that polling thread itself, so a message wakes one thread fewer. On
the 2-core machine this project is measured on, with 640×480 JPEG cameras at
10 fps, that cost a bare echo 20-27% less CPU a message and the server 7-13%
less a frame, with as many frames answered or more (docs/design.md).

gRPC reads its experiments (GRPC_EXPERIMENTS) once, as it loads, so the choice
is made in the environment before anything imports grpc, and the processes the
server starts inherit it. An operator's GRPC_EXPERIMENTS that names the
experiment decides instead: `event_engine_listener` keeps gRPC's default.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

VARIABLE = "GRPC_EXPERIMENTS"
EXPERIMENT = "event_engine_listener"


def _experiments(environ: Mapping[str, str]) -> list[str]:
    return [name.strip() for name in environ.get(VARIABLE, "").split(",") if name.strip()]


def prefer_iomgr(environ: MutableMapping[str, str]) -> None:
    """Turns gRPC's EventEngine listener off in `environ`, unless its GRPC_EXPERIMENTS
    already names that experiment either way."""
    named = _experiments(environ)
    if not any(name.lstrip("-") == EXPERIMENT for name in named):
        environ[VARIABLE] = ",".join([*named, f"-{EXPERIMENT}"])


def listener(environ: Mapping[str, str]) -> str:
    """The listener gRPC loads with under `environ` ("iomgr" or "EventEngine")."""
    named = [name for name in _experiments(environ) if name.lstrip("-") == EXPERIMENT]
    return "iomgr" if named and named[-1].startswith("-") else "EventEngine"
