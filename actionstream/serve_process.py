"""`actionstream serve` as a child process on free loopback ports.

The demo and the benches talk to a server in a process of its own, as a real
client would: its CPU time and its GIL are not theirs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import IO

# The one line `serve` prints on stdout once it listens (service/server.py).
_READY = re.compile(r"on (?P<host>\S+):(?P<port>\d+), metrics on http://\S+:(?P<mport>\d+)/metrics")


class ServeProcessError(Exception):
    """The server process did not come up; the message says where its log is."""


class ServeProcess:
    """Starts `actionstream serve` on 127.0.0.1 with gRPC and metrics on free ports."""

    def __init__(self, log: IO[str], model: str | None = None, args: Sequence[str] = ()) -> None:
        cmd = [sys.executable, "-m", "actionstream", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--metrics-host", "127.0.0.1", "--metrics-port", "0", *args]
        if model:
            cmd += ["--model", model]
        # The log goes to a file: a pipe nobody reads would stall the server once full.
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self._proc.stdout is not None
        self.ready_line = self._proc.stdout.readline().rstrip()
        match = _READY.search(self.ready_line)
        if match is None:
            self._proc.kill()
            self._proc.wait()
            raise ServeProcessError(f"the server did not start; its log: {log.name}")
        self.port = int(match["port"])
        self.metrics_port = int(match["mport"])

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

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
