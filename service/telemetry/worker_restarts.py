"""`actionstream_worker_restarts_total`: workers a `--workers` supervisor started in
place of one that died.

It lives in the supervisor, which never imports the service's Metrics (those are
the workers', read back from their multiprocess files): a plain Counter there
would write a multiprocess file of its own and be read twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class WorkerRestarts(Collector):
    """Counts replacements; exported from 0, so `increase()` sees the first one."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()  # scrapes read it from the metrics server's threads

    def inc(self) -> None:
        with self._lock:
            self._count += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            count = self._count
        yield CounterMetricFamily(
            "actionstream_worker_restarts",
            "Workers started in place of one that died (serve --workers)",
            value=count,
        )
