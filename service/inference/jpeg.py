"""A JPEG's frame header and scans, found with bounded work.

What the decoder (frames.py) reads of a JPEG before libjpeg decodes it: its
size, whether it is progressive and whether arithmetic-coded, and, when it is
progressive, how many scans it has.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from actionstream.service.inference.frame_error import FrameError

SOI = b"\xff\xd8"
# Start-of-frame markers (they carry the image size): C0..CF except DHT, JPG and DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field after them: TEM and the restart markers.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9
# Progressive frame headers (DCT, differential, arithmetic): decoded scan by scan.
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# Arithmetic-coded frame headers: decoded about 12 times slower a byte than Huffman's.
_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Segments walked before the frame header; cameras write under 20.
_MAX_MARKERS = 1024
# Scans a progressive JPEG may have: each is another pass over the whole image (1,000
# scans of a 3840x2160 image took 5.4 s to decode here).
MAX_SCANS = 64


class Header(NamedTuple):
    """What a JPEG's frame header says of the cost of decoding it."""

    width: int
    height: int
    progressive: bool  # decoded scan by scan, each a pass over the whole image
    arithmetic: bool  # arithmetic-coded rather than Huffman-coded


def header(data: bytes) -> Header:
    """The JPEG's frame header: its size, whether progressive and whether arithmetic-coded.

    Found by walking the marker segments before it, at most _MAX_MARKERS of
    them (fill bytes included): this runs on the event loop, and a file of two
    million empty segments took 0.8 s to walk unbounded.
    """
    i = len(SOI)
    for _ in range(_MAX_MARKERS):
        if i + 4 > len(data) or data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_SOS, _EOI):
            break  # image data begins (or ends) without a frame header
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF and i + 9 <= len(data):
            # Segment: length(2) precision(1) height(2) width(2) ...
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if width and height:
                return Header(width, height, marker in _PROGRESSIVE, marker in _ARITHMETIC)
            break
        if length < 2:
            break
        i += 2 + length
    raise FrameError(f"corrupt JPEG image ({len(data)} bytes): no valid frame header", "corrupt")


def scans(data: bytes, limit: int) -> int:
    """Start-of-scan markers in `data`, counted up to limit + 1.

    Entropy-coded data stuffs every 0xFF with a zero, so FF DA there is always a
    marker; an embedded thumbnail's scans count too, which only errs high.
    """
    scans, i = 0, 0
    while scans <= limit:
        i = data.find(b"\xff\xda", i) + 1
        if i == 0:
            break
        scans += 1
    return scans
