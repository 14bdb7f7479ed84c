"""A PNG's header and chunks, read with bounded work, and its data's inflated size checked.

The checks the decoder (frames.py) makes before OpenCV's PNG reader sees a
frame: the size from its header, chunks that claim no more than the file
holds, and image data that inflates to what its pixels take and no further;
and the frame as OpenCV is given it, without the chunks its pixels do not
come from.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from actionstream.service.inference.frame_error import FrameError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LENGTH = struct.Struct(">I")
# Samples a pixel has, by PNG colour type: grey, RGB, palette, grey+alpha, RGBA.
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7's seven passes: first column and row, then the steps between them.
_ADAM7 = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
    (0, 1, 1, 2),
)  # fmt: skip
# Inflated at most this much at a time while checking a PNG's data: memory stays small.
_INFLATE_STEP = 1 << 20
# Chunks walked in a PNG, besides one per 4 KB of it.
_MAX_CHUNKS = 256
# The chunks a frame's pixels come from (tRNS: a palette's or a colour's transparency,
# which a colour decode reads to drop; eXIf: the orientation OpenCV turns the image to,
# uncompressed). Every other is metadata: text, colour profiles, physical size, animation.
_PIXEL_CHUNKS = frozenset((b"IHDR", b"PLTE", b"tRNS", b"eXIf", b"IDAT", b"IEND"))


def size(data: bytes) -> tuple[int, int]:
    # IHDR is always the first chunk: signature(8) length(4) "IHDR"(4) width(4) height(4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): no IHDR header", "corrupt")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise FrameError(f"corrupt PNG image: header says {width}x{height}", "corrupt")
    return width, height


def check_chunks(data: bytes) -> None:
    """Refuses a PNG whose chunks claim more bytes than it has.

    OpenCV's PNG reader allocates each chunk's declared length before reading it:
    a 75-byte file whose IDAT claims 2 GB made it allocate 2 GB (and the server's
    memory limit would end every stream). The walk is bounded, for a file of
    many tiny chunks: no encoder writes more than one per 4 KB of image.
    """
    i, end = len(SIGNATURE), len(data)
    for _ in range(_MAX_CHUNKS + end // 4096):
        if i + 8 > end:
            return  # a truncated tail is the decoder's to refuse, and costs nothing
        (length,) = _LENGTH.unpack_from(data, i)
        if length > end - i - 12:
            raise FrameError(
                f"corrupt PNG image ({end} bytes): a chunk at byte {i} claims {length} bytes",
                "corrupt",
            )
        if data[i + 4 : i + 8] == b"IEND":
            return
        i += 12 + length
    raise FrameError(f"corrupt PNG image ({end} bytes): too many chunks", "corrupt")


def inflated_size(data: bytes, width: int, height: int) -> int:
    """The bytes a PNG's image data inflates to, by its header (IHDR: bit depth, colour
    type, interlacing): each row of each pass, with its filter byte."""
    if len(data) < 29:
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): its header is cut", "corrupt")
    bit_depth, colour, _, _, interlace = data[24:29]
    channels = _CHANNELS.get(colour)
    if channels is None or bit_depth not in (1, 2, 4, 8, 16) or interlace not in (0, 1):
        raise FrameError(
            f"corrupt PNG image: header says colour type {colour}, bit depth {bit_depth}, "
            f"interlace {interlace}",
            "corrupt",
        )
    bits = channels * bit_depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-(columns * bits) // 8))
    return total


def check_inflation(data: bytes, inflated: int) -> None:
    """Refuses a PNG whose image data inflates past what its pixels take.

    libpng reads the rows it needs and then inflates the rest of the data to its end,
    to throw it away: a 1 MB file of an 8x8 image whose data inflated to 1 GB of zeros
    passed every check above and took 4 s of a decode thread (11 s at 2.5 MB), and two
    streams of them left an honest stream 2 frames of 100. Inflating it here first,
    bounded by the size the header gives and in pieces, costs about what libpng's own
    inflating does: an honest 640x480 PNG took 1.57-1.75x as long to decode with the
    check (bench/png_decode.py), and a bomb is refused after its image's worth.
    """
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for piece in _image_data(data):
            while piece:
                produced += len(inflater.decompress(piece, _INFLATE_STEP))
                if produced > inflated:
                    width, height = size(data)
                    raise FrameError(
                        f"corrupt PNG image ({len(data)} bytes): its image data inflates "
                        f"past the {inflated} bytes its {width}x{height} pixels take",
                        "corrupt",
                    )
                piece = inflater.unconsumed_tail
            if inflater.eof:
                return
    except zlib.error as e:
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): {e}", "corrupt") from None


def pixel_chunks(data: bytes) -> bytes:
    """`data` with only the chunks its pixels come from; `data` itself if it has no other.

    libpng inflates every compressed text chunk it reads (zTXt, iTXt: up to 8 MB
    each), and OpenCV has it read them all, though nothing of them reaches the
    pixels: an 8x8 frame of 100 such chunks (771 KB) took 4.8 s to decode, was
    counted as the 64 pixels its header gives, and so held up every stream in its
    batch. Its chunks were checked (check_chunks): the walk is bounded, each chunk
    whole; a tail too short to be a chunk is left for the decoder to refuse.
    """
    kept: list[memoryview] = []
    view = memoryview(data)
    i, end = len(SIGNATURE), len(data)
    dropped = False
    while i + 8 <= end:
        (length,) = _LENGTH.unpack_from(data, i)
        kind = data[i + 4 : i + 8]
        following = min(end, i + 12 + length)
        if kind in _PIXEL_CHUNKS:
            kept.append(view[i:following])
        else:
            dropped = True
        i = following
        if kind == b"IEND":
            break
    else:
        kept.append(view[i:end])
    if not dropped:
        return data
    return SIGNATURE + b"".join(kept)


def _image_data(data: bytes) -> Iterator[bytes]:
    """The payloads of a PNG's IDAT chunks, in order (its chunks were checked already)."""
    i, end = len(SIGNATURE), len(data)
    while i + 8 <= end:
        (length,) = _LENGTH.unpack_from(data, i)
        kind = data[i + 4 : i + 8]
        if kind == b"IDAT":
            yield data[i + 8 : i + 8 + length]
        elif kind == b"IEND":
            return
        i += 12 + length
