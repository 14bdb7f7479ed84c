"""The `process_*` metrics of a server's processes, read from /proc as Prometheus reads
any process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actionstream.service.telemetry.processes import Processes

# Burns about half a second of CPU, then waits to be told to exit.
BURN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
BURN_THEN_WAIT = BURN + "print('done', flush=True)\nsys.stdin.read()\n"

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")


def _cpu(registry: CollectorRegistry) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "process_cpu_seconds":
            return float(family.samples[0].value)
    raise AssertionError("no process_cpu_seconds_total")


def test_the_cpu_of_a_child_that_exited_stays_in_the_total() -> None:
    # A --workers supervisor that replaces a dead worker: the worker's seconds were
    # spent by the server, and a counter that loses them reads as a reset.
    registry = CollectorRegistry()
    registry.register(Processes(lambda: [os.getpid()]))
    before = _cpu(registry)
    subprocess.run([sys.executable, "-c", BURN], check=True)  # waited for: reaped
    assert _cpu(registry) - before >= 0.45


def test_the_cpu_never_goes_back_when_a_process_leaves_the_list() -> None:
    # Between a process's own times and its parent's count of reaped children, one
    # scrape can see it twice or not at all.
    registry = CollectorRegistry()
    pids = [os.getpid()]
    registry.register(Processes(lambda: pids))
    with subprocess.Popen(
        [sys.executable, "-c", BURN_THEN_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        pids.append(child.pid)
        with_child = _cpu(registry)
        pids.remove(child.pid)  # alive, not reaped: in neither count now
        assert _cpu(registry) >= with_child
        assert child.stdin is not None
        child.stdin.close()
