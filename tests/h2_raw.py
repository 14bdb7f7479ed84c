"""HTTP/2 written by hand (RFC 9113, and RFC 7541 for headers), for tests that send
what no gRPC client would: no library paces or checks it."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, PING, GOAWAY = 1, 4, 6, 7
END_HEADERS = 0x4
HEADER = struct.Struct(">3sBBI")  # length (24 bits), type, flags, stream id


def frame(kind: int, payload: bytes, flags: int = 0, stream: int = 0) -> bytes:
    return HEADER.pack(len(payload).to_bytes(3, "big"), kind, flags, stream) + payload


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's integer with an N-bit prefix (RFC 7541, 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """`headers` as literals that are not indexed, nor Huffman-coded: a block any
    decoder reads whatever its table holds."""
    block = b""
    for name, value in headers:
        block += b"\x00"
        for text in (name.encode(), value.encode()):
            block += _integer(len(text), 7) + text
    return block


def grpc_call(port: int, method: str) -> list[tuple[str, str]]:
    """The headers that open a call of `method` ("/package.Service/Method")."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
