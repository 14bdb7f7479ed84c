"""A client that floods a gRPC port with HTTP/2 PING frames, for the tests.

`python tests/h2_flood.py PORT SECONDS CONNECTIONS` keeps CONNECTIONS
connections sending PINGs, 500 a write, for SECONDS, each read by a thread of
its own that throws the server's answers away. gRPC answers a connection's
third early ping with GOAWAY (`too_many_pings`) but first reads what it was
sent, and the flood connects again. Written from HTTP/2's framing alone (RFC
9113): no library that would pace it. Prints what it did as JSON at the end.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

from h2_raw import GOAWAY, HEADER, PING, PREFACE, SETTINGS, frame


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pings = 0
        self.connections = 0
        self.goaways = 0
        self.refused = 0


def _read(sock: socket.socket, totals: Totals) -> None:
    """Reads the server's frames until it closes, counting its GOAWAYs."""
    buf = b""
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            return
        if not data:
            return
        buf += data
        while len(buf) >= HEADER.size:
            length, kind, _, _ = HEADER.unpack_from(buf)
            end = HEADER.size + int.from_bytes(length, "big")
            if len(buf) < end:
                break
            if kind == GOAWAY:
                with totals.lock:
                    totals.goaways += 1
            buf = buf[end:]


def _flood(port: int, deadline: float, totals: Totals) -> None:
    pings = b"".join(frame(PING, struct.pack(">Q", n)) for n in range(500))
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:  # the server is gone or stopped listening
            with totals.lock:
                totals.refused += 1
            time.sleep(0.05)
            continue
        with totals.lock:
            totals.connections += 1
        reader = threading.Thread(target=_read, args=(sock, totals), daemon=True)
        reader.start()
        try:
            sock.sendall(PREFACE + frame(SETTINGS, b""))
            while time.monotonic() < deadline:
                sock.sendall(pings)
                with totals.lock:
                    totals.pings += 500
        except OSError:  # closed by the server: connect again
            pass
        finally:
            sock.close()
            reader.join(timeout=2)


def main() -> None:
    port, seconds, connections = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    deadline = time.monotonic() + seconds
    totals = Totals()
    threads = [
        threading.Thread(target=_flood, args=(port, deadline, totals)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({k: v for k, v in vars(totals).items() if k != "lock"}), flush=True)


if __name__ == "__main__":
    main()
