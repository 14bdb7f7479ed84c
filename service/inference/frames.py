"""Client frames to model input: decode JPEG/PNG or raw pixels, resize to the model's size.

Frames come from the network, so everything is bounded before work is done:
the encoded size, and the pixel count the image header declares (read from
the PNG/JPEG header here, since OpenCV offers no cheap way to ask), so a
small file that inflates to gigabytes is refused before it is decoded.

Resizing stretches to the model's H×W without cropping, with INTER_AREA when
shrinking: it averages every source pixel, so fine texture and small moving
shapes do not alias into flicker the way bilinear sampling makes them. A JPEG
larger than the model is first decoded at 1/2, 1/4 or 1/8 scale by libjpeg
itself (at 1/8 it computes only each 8×8 block's mean, with no inverse DCT),
at the smallest scale that leaves at least `jpeg_floor` of the model's size;
the final resize does the rest. The default floor, 7/8, lets a 640×480 camera
frame decode at 1/8 (80×60) for a 64×64 model, enlarged by 1/15 in height:
0.68 ms against 0.95 ms at 1/4 for 67 KB frames, 0.7 grey levels from a full decode +
INTER_AREA on camera frames, and the bundled model's accuracy on such frames
unchanged. Fine texture near the model's resolution suffers more (7.7 grey
levels on the detailed image in tests/test_frames.py, against 2.3 at 1/4);
a floor of 1.0 never enlarges after a reduced decode.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from actionstream.resizing import fit
from actionstream.service.telemetry.metrics import RejectReason
from actionstream.v1 import actionstream_pb2 as pb

# How small a reduced JPEG decode may come out, as a share of the model's input size.
JPEG_FLOOR = 0.875

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# JPEG start-of-frame markers (they carry the image size): C0..CF except DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field after them: TEM and the restart markers.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
# Progressive frame headers (DCT, differential, arithmetic): decoded scan by scan.
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# Segments walked before the frame header; cameras write under 20.
_JPEG_MAX_MARKERS = 1024
# Scans a progressive JPEG may have: each is another pass over the whole image (1,000
# scans of a 3840x2160 image took 5.4 s to decode here).
JPEG_MAX_SCANS = 64
_PNG_LENGTH = struct.Struct(">I")
# Samples a pixel has, by PNG colour type: grey, RGB, palette, grey+alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7's seven passes: first column and row, then the steps between them.
_ADAM7 = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
    (0, 1, 1, 2),
)  # fmt: skip
# Inflated at most this much at a time while checking a PNG's data: memory stays small.
_INFLATE_STEP = 1 << 20
# Chunks walked in a PNG, besides one per 4 KB of it.
_PNG_MAX_CHUNKS = 256
_JPEG_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


class FrameError(ValueError):
    """A frame that cannot be used; the message is meant for the client."""

    def __init__(self, message: str, reason: RejectReason) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason


@dataclass(frozen=True, slots=True)
class Checked:
    """A frame that passed the checks done before decoding: what it is and its decoded size."""

    kind: Literal["JPEG", "PNG", "raw"]
    width: int  # as decoded (after libjpeg's reduced-scale decode for a JPEG)
    height: int
    flag: int  # cv2.imdecode's flag for an encoded image
    # What decoding costs, as the pixel count of a baseline image that costs as much: a
    # JPEG's full size (libjpeg entropy-decodes every pixel at any reduced scale), times
    # half its scans when progressive (each scan is another pass over the image).
    work: int = 0
    # The encoded bytes, read once: each read of a protobuf bytes field is a fresh copy.
    data: bytes = b""
    # The image's own size, as its header gives it (for what errors tell the client).
    header_size: tuple[int, int] = (0, 0)
    # A PNG's image data once inflated, from its header: what its pixels take, and no more.
    inflated: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class FrameDecoder:
    """Turns frames into uint8 (height, width, 3) BGR arrays for the model.

    `check` reads only headers and lengths (microseconds, on the event loop
    as a frame arrives), `decode` does the work (on the batcher's thread).
    """

    height: int
    width: int
    max_bytes: int
    max_pixels: int
    jpeg_floor: float = JPEG_FLOOR

    def check(self, frame: pb.Frame) -> Checked:
        """What `decode` will face; raises FrameError for a frame it would refuse."""
        kind = frame.WhichOneof("image")
        if kind == "encoded":
            return self._check_image(frame.encoded)
        if kind == "raw":
            return self._check_raw(frame.raw)
        raise FrameError("frame carries no image (set `encoded` or `raw`)", "missing")

    def decode(self, frame: pb.Frame, checked: Checked | None = None) -> np.ndarray:
        """Model input from a frame; `checked` is `check(frame)` if the caller has it."""
        checked = self.check(frame) if checked is None else checked
        if checked.kind == "raw":
            raw = frame.raw
            image: np.ndarray = np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.width, 3)
            if raw.format == pb.PIXEL_FORMAT_RGB:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            return self.fit(image)
        data = checked.data
        if checked.kind == "PNG":
            _check_png_inflation(data, checked.inflated)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), checked.flag)
        if decoded is None:
            width, height = checked.header_size
            raise FrameError(
                f"corrupt {checked.kind} image ({len(data)} bytes, {width}x{height})", "corrupt"
            )
        return self.fit(decoded)

    def decode_image(self, data: bytes) -> np.ndarray:
        """A JPEG or PNG file's bytes -> model input."""
        return self.decode(pb.Frame(encoded=data))

    def decode_raw(self, raw: pb.RawImage) -> np.ndarray:
        """Uncompressed BGR or RGB pixels -> model input."""
        return self.decode(pb.Frame(raw=raw))

    def _check_image(self, data: bytes) -> Checked:
        if not data:
            raise FrameError("image is empty (0 bytes)", "empty")
        if len(data) > self.max_bytes:
            raise FrameError(
                f"image is {len(data)} bytes; the server accepts at most {self.max_bytes} "
                "(max_frame_bytes)",
                "too_many_bytes",
            )
        if data.startswith(_PNG_SIGNATURE):
            width, height = _png_size(data)
            self._check_pixels(width, height, "PNG")
            _check_png_chunks(data)
            inflated = _png_inflated_size(data, width, height)
            return Checked(
                "PNG",
                width,
                height,
                cv2.IMREAD_COLOR,
                width * height,
                data,
                (width, height),
                inflated,
            )
        if data.startswith(_JPEG_SOI):
            width, height, progressive = _jpeg_header(data)
            self._check_pixels(width, height, "JPEG")
            passes = 1.0
            if progressive:
                scans = _jpeg_scans(data, JPEG_MAX_SCANS)
                if scans > JPEG_MAX_SCANS:
                    raise FrameError(
                        f"progressive JPEG image has more than {JPEG_MAX_SCANS} scans; the "
                        f"server decodes at most {JPEG_MAX_SCANS} (encoders write about 10)",
                        "corrupt",
                    )
                passes = max(2, scans) / 2
            factor, flag = self._jpeg_reduction(width, height)
            work = int(width * height * passes)
            reduced = (-(-width // factor), -(-height // factor))
            return Checked("JPEG", *reduced, flag, work, data, (width, height))
        raise FrameError(f"not a JPEG or PNG image ({len(data)} bytes)", "not_an_image")

    def _check_raw(self, raw: pb.RawImage) -> Checked:
        if raw.format not in (pb.PIXEL_FORMAT_BGR, pb.PIXEL_FORMAT_RGB):
            name = (
                pb.PixelFormat.Name(raw.format)
                if raw.format in pb.PixelFormat.values()
                else str(raw.format)
            )
            raise FrameError(
                f"raw image format must be PIXEL_FORMAT_BGR or PIXEL_FORMAT_RGB, got {name}",
                "bad_raw",
            )
        if raw.width == 0 or raw.height == 0:
            raise FrameError(
                f"raw image needs a width and height, got {raw.width}x{raw.height}", "bad_raw"
            )
        self._check_pixels(raw.width, raw.height, "raw")
        expected = raw.width * raw.height * 3
        if expected > self.max_bytes:  # gRPC's own limit leaves room above ours
            raise FrameError(
                f"raw {raw.width}x{raw.height} image is {expected} bytes; the server accepts "
                f"at most {self.max_bytes} (max_frame_bytes)",
                "too_many_bytes",
            )
        if len(raw.data) != expected:
            raise FrameError(
                f"raw {raw.width}x{raw.height} image needs {expected} bytes "
                f"(width*height*3), got {len(raw.data)}",
                "bad_raw",
            )
        return Checked("raw", raw.width, raw.height, cv2.IMREAD_UNCHANGED, raw.width * raw.height)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """A decoded image at the model's size, by training's own rule."""
        return fit(image, self.height, self.width)

    def _check_pixels(self, width: int, height: int, kind: str) -> None:
        if width * height > self.max_pixels:
            raise FrameError(
                f"{kind} image is {width}x{height} = {width * height} pixels; the server "
                f"accepts at most {self.max_pixels} (max_frame_pixels)",
                "too_many_pixels",
            )

    def _jpeg_reduction(self, width: int, height: int) -> tuple[int, int]:
        # The smallest libjpeg scale whose short side still covers jpeg_floor of the
        # model's long side (min/max: whichever way EXIF orientation turns the image).
        short, need = min(width, height), max(self.width, self.height) * self.jpeg_floor
        for factor, flag in _JPEG_REDUCED:
            if -(-short // factor) >= need:
                return factor, flag
        return 1, cv2.IMREAD_COLOR


def _png_size(data: bytes) -> tuple[int, int]:
    # IHDR is always the first chunk: signature(8) length(4) "IHDR"(4) width(4) height(4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): no IHDR header", "corrupt")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise FrameError(f"corrupt PNG image: header says {width}x{height}", "corrupt")
    return width, height


def _check_png_chunks(data: bytes) -> None:
    """Refuses a PNG whose chunks claim more bytes than it has.

    OpenCV's PNG reader allocates each chunk's declared length before reading it:
    a 75-byte file whose IDAT claims 2 GB made it allocate 2 GB (and the server's
    memory limit would end every stream). The walk is bounded, for a file of
    many tiny chunks: no encoder writes more than one per 4 KB of image.
    """
    i, end = len(_PNG_SIGNATURE), len(data)
    for _ in range(_PNG_MAX_CHUNKS + end // 4096):
        if i + 8 > end:
            return  # a truncated tail is the decoder's to refuse, and costs nothing
        (length,) = _PNG_LENGTH.unpack_from(data, i)
        if length > end - i - 12:
            raise FrameError(
                f"corrupt PNG image ({end} bytes): a chunk at byte {i} claims {length} bytes",
                "corrupt",
            )
        if data[i + 4 : i + 8] == b"IEND":
            return
        i += 12 + length
    raise FrameError(f"corrupt PNG image ({end} bytes): too many chunks", "corrupt")


def _png_inflated_size(data: bytes, width: int, height: int) -> int:
    """The bytes a PNG's image data inflates to, by its header (IHDR: bit depth, colour
    type, interlacing): each row of each pass, with its filter byte."""
    if len(data) < 29:
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): its header is cut", "corrupt")
    bit_depth, colour, _, _, interlace = data[24:29]
    channels = _PNG_CHANNELS.get(colour)
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


def _check_png_inflation(data: bytes, inflated: int) -> None:
    """Refuses a PNG whose image data inflates past what its pixels take.

    libpng reads the rows it needs and then inflates the rest of the data to its end,
    to throw it away: a 1 MB file of an 8x8 image whose data inflated to 1 GB of zeros
    passed every check above and took 4 s of a decode thread (11 s at 2.5 MB), and two
    streams of them left an honest stream 2 frames of 100. Inflating it here first,
    bounded by the size the header gives and in pieces, costs about what libpng's own
    inflating does (5 ms of a 7-ms decode of a 640x480 PNG): an honest PNG takes that
    much longer, and a bomb is refused after its image's worth.
    """
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for piece in _png_image_data(data):
            while piece:
                produced += len(inflater.decompress(piece, _INFLATE_STEP))
                if produced > inflated:
                    raise FrameError(
                        f"corrupt PNG image ({len(data)} bytes): its image data inflates "
                        f"past the {inflated} bytes its {_png_dimensions(data)} pixels take",
                        "corrupt",
                    )
                piece = inflater.unconsumed_tail
            if inflater.eof:
                return
    except zlib.error as e:
        raise FrameError(f"corrupt PNG image ({len(data)} bytes): {e}", "corrupt") from None


def _png_image_data(data: bytes) -> Iterator[bytes]:
    """The payloads of a PNG's IDAT chunks, in order (its chunks were checked already)."""
    i, end = len(_PNG_SIGNATURE), len(data)
    while i + 8 <= end:
        (length,) = _PNG_LENGTH.unpack_from(data, i)
        kind = data[i + 4 : i + 8]
        if kind == b"IDAT":
            yield data[i + 8 : i + 8 + length]
        elif kind == b"IEND":
            return
        i += 12 + length


def _png_dimensions(data: bytes) -> str:
    width, height = struct.unpack(">II", data[16:24])
    return f"{width}x{height}"


def _jpeg_header(data: bytes) -> tuple[int, int, bool]:
    """Width, height and whether progressive, from the JPEG frame header.

    Found by walking the marker segments before it, at most _JPEG_MAX_MARKERS of
    them (fill bytes included): this runs on the event loop, and a file of two
    million empty segments took 0.8 s to walk unbounded.
    """
    i = len(_JPEG_SOI)
    for _ in range(_JPEG_MAX_MARKERS):
        if i + 4 > len(data) or data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            break  # image data begins (or ends) without a frame header
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF and i + 9 <= len(data):
            # Segment: length(2) precision(1) height(2) width(2) ...
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if width and height:
                return width, height, marker in _JPEG_PROGRESSIVE
            break
        if length < 2:
            break
        i += 2 + length
    raise FrameError(f"corrupt JPEG image ({len(data)} bytes): no valid frame header", "corrupt")


def _jpeg_scans(data: bytes, limit: int) -> int:
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
