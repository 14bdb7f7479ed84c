"""`actionstream serve` as a child process, for the demo, the benches and the tests.

They talk to a server in a process of its own, as a real client would: its
CPU time and its GIL are not theirs. The server says it is ready by writing
its bound ports to `--ready-file` (JSON), so any settings work, metrics off
included, and a server that dies or hangs while starting is noticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# Both ports on free loopback ports; later flags in `args` override these.
LOOPBACK = (
    *("--host", "127.0.0.1", "--port", "0"),
    *("--metrics-host", "127.0.0.1", "--metrics-port", "0"),
)


class ServeProcessError(Exception):
    """The server process did not come up; the message says why and where its log is."""


def _said(log: IO[str]) -> str:
    """The server's last line (its reason, when it could not start), and where its log
    is when it is a file with a name: a temporary one's "name" is its descriptor."""
    named = isinstance(log.name, str)
    last = ""
    with contextlib.suppress(OSError, ValueError):  # not readable, or closed
        log.flush()
        if named:  # read anew: the caller's may be open for writing only
            text = Path(log.name).read_text(errors="replace")
        else:
            log.seek(0)
            text = log.read()
        lines = [line.strip() for line in text[-4096:].splitlines() if line.strip()]
        last = f": {lines[-1]}" if lines else ""
    return last + (f"; its log: {log.name}" if named else "")


class ServeProcess(contextlib.AbstractContextManager["ServeProcess"]):
    """A running `actionstream serve`; `port` and `metrics_port` (None when off) once ready."""

    def __init__(
        self,
        log: IO[str],
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        flags: Sequence[str] = LOOPBACK,
        startup_timeout: float = 60.0,
    ) -> None:
        """Starts the server with `flags` then `args`, its output to `log`, and waits until ready.

        `env` is added to this process's environment. Raises ServeProcessError
        if the server exits or is not ready within `startup_timeout` seconds.
        """
        self._dir = tempfile.TemporaryDirectory(prefix="actionstream-serve-")
        ready = self.ready_file = Path(self._dir.name) / "ready.json"
        cmd = [sys.executable, "-m", "actionstream", "serve", *flags, *args]
        cmd += ["--ready-file", str(ready)]
        # Output goes to a file: a pipe nobody reads would stall the server once full.
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=log, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + startup_timeout
        while not ready.exists():
            code = self._proc.poll()
            if code is not None:
                self._dir.cleanup()
                raise ServeProcessError(f"the server exited with {code}{_said(log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServeProcessError(
                    f"the server was not ready within {startup_timeout:g} s{_said(log)}"
                )
            time.sleep(0.02)
        self.ready: dict[str, Any] = json.loads(ready.read_text())
        self.port: int = self.ready["port"]
        self.metrics_port: int | None = self.ready["metrics_port"]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit code once the server has exited, else None."""
        return self._proc.poll()

    def wait(self, timeout: float) -> int:
        """The exit code, once the server exits by itself within `timeout` seconds
        (subprocess.TimeoutExpired if it does not)."""
        return self._proc.wait(timeout=timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM (a graceful shutdown), then the exit code; killed if it hangs."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()
        finally:
            self._dir.cleanup()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
