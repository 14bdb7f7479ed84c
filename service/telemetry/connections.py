"""`actionstream_connections`: client connections open on the gRPC port, beside their cap.

gRPC keeps no count of its connections that a Python server can read, and closes
those beyond `--max-connections` before the service sees them. So the count is
read as the kernel keeps it, at each scrape: the established TCP connections on
the server's port whose sockets the server's processes hold (a `--workers`
server's, summed). At the cap, new connections are being closed: a camera that
cannot connect then shows here, not in any call counter. Linux only (/proc);
elsewhere it exports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_ESTABLISHED = "01"  # /proc/net/tcp's state column


class Connections(Collector):
    """Counts the established connections on `port` held by `pids()`, and exports `cap`."""

    def __init__(self, pids: Callable[[], Iterable[int]], port: int, cap: int) -> None:
        self._pids = pids
        self._port = port
        self._cap = cap

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not Path("/proc/net/tcp").exists():
            return
        yield GaugeMetricFamily(
            "actionstream_connections",
            "Client connections open on the gRPC port.",
            established_on(self._port, self._pids()),
        )
        yield GaugeMetricFamily(
            "actionstream_max_connections",
            "Client connections the gRPC port keeps open at most (--max-connections).",
            self._cap,
        )


def established_on(port: int, pids: Iterable[int]) -> int:
    """Established TCP connections whose local port is `port` and whose sockets `pids`
    hold (a socket shared by two of them counts once)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError):  # a worker that just exited
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed since the listing
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    # Every socket of the host's network namespace is a line (a flood's TIME_WAITs too):
    # only lines naming the port are split, which a flood of 8,000 connections made cost
    # a scrape 0.2 s of the server's interpreter lock when every line was.
    local = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = Path(table).read_text()
        except FileNotFoundError:  # no IPv6
            continue
        for line in text.splitlines()[1:]:
            if local not in line:
                continue
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = line.split()
            if fields[3] == _ESTABLISHED and fields[1].endswith(local[:-1]) and fields[9] in inodes:
                count += 1
    return count
