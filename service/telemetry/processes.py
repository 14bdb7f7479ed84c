"""The server's own processes, as Prometheus reads any process: CPU, memory, files.

prometheus_client's ProcessCollector reads one process, and on a registry the
caller injects it is not there at all. `serve --workers` is several processes
(a supervisor and its workers) behind one /metrics, so this collector sums the
processes it is given under the usual `process_*` names, which dashboards and
alerts written for any exporter already use. Linux only (/proc); elsewhere it
exports nothing.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


class Processes(Collector):
    """Sums CPU, resident memory and open files over `pids()`; the start time is the
    first process's (the one that serves or supervises). The CPU counts, beside the
    live processes', that of the first one's children that have exited and been
    waited for: a worker that died and was replaced keeps its seconds in the total."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self._boot = _boot_time() if Path("/proc/stat").exists() else None
        # A worker reaped between reading its own times and its parent's would be
        # counted twice in one scrape, or missed in one; a counter must never go back.
        self._cpu_floor = 0.0
        self._lock = threading.Lock()  # scrapes may run at once

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self._boot is None:
            return
        cpu = 0.0
        rss = vsize = fds = 0
        max_fds = 0.0
        start: float | None = None
        for i, pid in enumerate(self._pids()):
            try:
                # After the command name, which may hold spaces and parentheses.
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
                limit = _max_open_files(pid)
            except (FileNotFoundError, ProcessLookupError):  # a worker that just exited
                continue
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
            if i == 0:  # + cutime + cstime
                cpu += (int(fields[13]) + int(fields[14])) / _TICKS
            vsize += int(fields[20])
            rss += int(fields[21]) * _PAGE
            fds += open_fds
            max_fds += limit
            if start is None:
                start = self._boot + int(fields[19]) / _TICKS
        with self._lock:
            self._cpu_floor = cpu = max(cpu, self._cpu_floor)
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time of the server's processes.", cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the server's processes.", rss
        )
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory of the server's processes.", vsize
        )
        yield GaugeMetricFamily("process_open_fds", "Open files of the server's processes.", fds)
        # Summed as the open files are, so open / max is the share of what they may open
        # together (each process's own limit is the same: the workers inherit it).
        yield GaugeMetricFamily(
            "process_max_fds", "Open files the server's processes may have.", max_fds
        )
        if start is not None:
            yield GaugeMetricFamily(
                "process_start_time_seconds", "When the server started, in Unix time.", start
            )


def _max_open_files(pid: int) -> float:
    """The process's soft limit on open files, from /proc/PID/limits (inf: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return float(soft) if soft.isdigit() else math.inf
    return math.inf
