"""The /metrics HTTP endpoint: prometheus_client's WSGI app, on a server that bounds
what a client can hold.

prometheus_client's own `start_http_server` gives every connection a thread with
no timeout: a client that opens connections and sends half a request holds each
thread and file descriptor forever. 300 such connections took 316 threads, and
at the process's descriptor limit gRPC could accept no connection either (an
honest stream failed with DEADLINE_EXCEEDED) until they closed. Here a
connection has `REQUEST_DEADLINE_S` to be answered, however slowly it sends;
one address holds at most `PER_ADDRESS` connections and all together at most
`MAX_CONNECTIONS`; a connection past either is closed unanswered. A scrape
takes milliseconds and Prometheus sends one at a time, so a flood from one
address leaves Prometheus's own scrapes, from another, answered.

Only `/metrics` answers with the metrics (and `/` with a line pointing there);
every other path is 404, as exporters do, so a typo in a scrape config shows as
a failing target instead of a working one at the wrong path.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
PER_ADDRESS = 4
REQUEST_DEADLINE_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    # A read that waits this long for the client's next bytes gives up.
    timeout = REQUEST_DEADLINE_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds, forever."""


class _BoundedServer(ThreadingWSGIServer):
    """A thread a connection, so many of them and so many an address, each cut off at
    its deadline."""

    daemon_threads = True
    # The listen backlog: socketserver's 5 made connections beyond it wait a second for
    # a SYN to be sent again, a flood's and a scrape's alike.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0])
        with self._lock:
            full = self._open.total() >= MAX_CONNECTIONS or self._open[address] >= PER_ADDRESS
            if not full:
                self._open[address] += 1
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave(address)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave(str(client_address[0]))

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The socket's timeout bounds each read; the deadline bounds the whole request,
        # for a client that sends a byte just inside each timeout. It is over before the
        # socket is closed (after this returns), so it never cuts a closed one.
        deadline = _Deadline(request)
        try:
            super().finish_request(request, client_address)
        finally:
            deadline.stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client too slow (cut at its deadline, or its read timed out) or gone is no
        error of the server's: socketserver's default printed a traceback to stderr for
        each, outside the log. Anything else is logged, with its traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        logger.exception("the metrics endpoint failed to answer %s", client_address[0])

    def _leave(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]


class _Deadline:
    """Shuts a connection down after REQUEST_DEADLINE_S unless stopped first."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(REQUEST_DEADLINE_S, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._timer.cancel()

    def _cut(self) -> None:
        # Wakes the handler's blocked read or write with an error; its thread then ends.
        with self._lock:
            if self._stopped:
                return
            with contextlib.suppress(OSError):
                self._connection.shutdown(socket.SHUT_RDWR)


_App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PATH = "/metrics"


def _at_metrics_only(metrics: _App) -> _App:
    """`metrics` at PATH; a pointer to it at `/`; 404 elsewhere, 405 for a method
    other than GET or HEAD."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (PATH, "/"):
            return _plain(start_response, "404 Not Found", f"not found: metrics are at {PATH}")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET or HEAD only")
        if path == "/":
            return _plain(start_response, "200 OK", f"actionstream: metrics are at {PATH}")
        if environ["REQUEST_METHOD"] == "HEAD":  # prometheus_client's app takes GET alone
            body = metrics({**environ, "REQUEST_METHOD": "GET"}, start_response)
            if hasattr(body, "close"):
                body.close()
            return []
        return metrics(environ, start_response)

    return app


def _plain(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = f"{text}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if status.startswith("405"):
        headers.append(("Allow", "GET, HEAD"))
    start_response(status, headers)
    return [body]


class MetricsServer:
    """The /metrics HTTP endpoint, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        """Binds `host:port` (port 0 picks a free one) and starts serving."""
        # Without the `_created` series prometheus_client adds beside every counter and
        # histogram in the text format: they doubled the series an operator stores, for a
        # reset time Prometheus finds from the counters themselves. (Process-wide: this
        # process exports no other metrics.)
        disable_created_metrics()
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(_BoundedServer):
            address_family = family

        self._server = make_server(
            str(sockaddr[0]),
            port,
            _at_metrics_only(make_wsgi_app(registry)),
            Server,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
