"""Stops asked for while `actionstream serve` starts, before its serving loop can take
its own signal handlers (imports, the model's load and warm-up take seconds).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from types import FrameType

# What stops a server: SIGHUP too, which a closed terminal or SSH session sends, and
# whose default action would end the process without its drain.
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A stop asked for while the server starts: the server stops as soon as it is up.
# Without it a SIGTERM then killed the process, and as a container's PID 1, which has no
# default signal actions, was ignored outright: `docker stop` in the first second waited
# out its 10 s and killed the container.
STOPPED_WHILE_STARTING = threading.Event()
# What a `--workers` supervisor sends its workers on a second stop: end the open streams
# now. Not SIGTERM, which a worker may get twice for one stop (see server.run_worker).
HURRY = signal.SIGUSR1
HURRIED_WHILE_STARTING = threading.Event()


def hurry_once_started() -> None:
    """A worker's HURRY before its serving loop takes it (its default would kill the
    worker, resetting connections): noted, it stops and ends its streams once up."""
    signal.signal(HURRY, _hurry_while_starting)


def _hurry_while_starting(signum: int, frame: FrameType | None) -> None:
    HURRIED_WHILE_STARTING.set()
    STOPPED_WHILE_STARTING.set()


def stop_once_started(*signals: signal.Signals) -> None:
    """From now until the server takes its own signal handlers, `signals` (default:
    STOPS) stop it as soon as it is up."""
    for sig in signals or STOPS:
        signal.signal(sig, _stop_while_starting)


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    if STOPPED_WHILE_STARTING.is_set():
        # Asked again (a model load that hangs, an impatient Ctrl-C): nothing is served
        # yet, so nothing is cut. os.write and os._exit, as a signal handler may.
        os.write(2, b"actionstream serve: stopped while starting\n")
        os._exit(128 + signum)
    STOPPED_WHILE_STARTING.set()


def stop_with(parent: int) -> None:
    """Asks the kernel for a SIGTERM (this worker's stop) when the process that started
    it dies: a supervisor killed outright (SIGKILL, the OOM killer) would otherwise leave
    its workers serving the port, with no /metrics and no one to stop them. Linux only;
    elsewhere nothing. A parent already gone stops the worker at once."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
