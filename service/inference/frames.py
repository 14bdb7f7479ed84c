"""Client frames to model input: decode JPEG/PNG or raw pixels, resize to the model's size.

Frames come from the network, so everything is bounded before work is done:
the encoded size, and the pixel count the image header declares (read from
the header by png.py and jpeg.py, since OpenCV offers no cheap way to ask), so
a small file that inflates to gigabytes is refused before it is decoded.

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

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from actionstream.resizing import fit
from actionstream.service.inference import jpeg, png
from actionstream.service.inference.frame_error import FrameError as FrameError
from actionstream.v1 import actionstream_pb2 as pb

# How small a reduced JPEG decode may come out, as a share of the model's input size.
JPEG_FLOOR = 0.875
# Pixels a JPEG's byte counts as, where its bytes outweigh its pixels. Entropy decoding
# costs by the byte (5.6-8.3 ns here at 1/8 scale) and the rest by the pixel (0.4 ns):
# a 640x480 camera frame of 67 KB takes 0.6 ms, a 1920x1080 one of white noise at
# quality 95 (5 MB, 19 bits a pixel) 28-42 ms. Counted by its pixels alone, that frame
# cost exactly a --heavy-pixels image and was decoded in the shared batches, where four
# streams of them at 10 fps left an honest camera 25 frames of 101 at p50 362 ms. At 1,
# only a JPEG of more than 8 bits a pixel counts by its bytes: cameras write 0.5-2, and
# a detailed scene at quality 95 about 4.5-6 (USB cameras' 4:2:2 MJPEG included), so
# theirs still count by their pixels and never flip lanes from frame to frame.
JPEG_BYTE_PIXELS = 1
# An arithmetic-coded JPEG costs by the byte far more: at 1/8 scale 105-130 ns a byte here
# (640x480 to 1920x1080, baseline and progressive, noisy scenes), against 2.0-2.7 ns a pixel
# for a camera's Huffman-coded frame, so one byte counts as 48 pixels. No camera writes
# them; counted by their pixels, a 1920x1080 one (460 KB, 53 ms to decode) would have
# shared the batches as exactly a --heavy-pixels image (5.5 ms Huffman-coded).
ARITHMETIC_BYTE_PIXELS = 48
# A PNG costs by the pixel far more than a JPEG: inflating (twice: check_inflation, then
# libpng), unfiltering and resizing took 18-42 ns a pixel here (flat 4K to noisy 640x480),
# so one PNG pixel counts as 8. Counted as one, a 1920x1080 PNG (37-87 ms to decode) was
# exactly a --heavy-pixels image and shared the batches; a 640x480 one (10-14 ms, against
# 0.6 ms for a camera's JPEG) now goes to the heavy lane, a 320x240 one (2.3 ms) does not.
PNG_PIXELS = 8

_JPEG_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


@dataclass(frozen=True, slots=True)
class Checked:
    """A frame that passed the checks done before decoding: what it is and its decoded size."""

    kind: Literal["JPEG", "PNG", "raw"]
    width: int  # as decoded (after libjpeg's reduced-scale decode for a JPEG)
    height: int
    flag: int  # cv2.imdecode's flag for an encoded image
    # What decoding costs, as the pixel count of a baseline JPEG that costs as much: a
    # PNG's pixels times PNG_PIXELS; a JPEG's full size (libjpeg entropy-decodes every
    # pixel at any reduced scale), times half its scans when progressive (each scan is
    # another pass over the image), or its bytes times JPEG_BYTE_PIXELS
    # (ARITHMETIC_BYTE_PIXELS when arithmetic-coded) where that is more.
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
            data = png.pixel_chunks(data)
            png.check_inflation(data, checked.inflated)
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
        if data.startswith(png.SIGNATURE):
            width, height = png.size(data)
            self._check_pixels(width, height, "PNG")
            png.check_chunks(data)
            inflated = png.inflated_size(data, width, height)
            return Checked(
                "PNG",
                width,
                height,
                cv2.IMREAD_COLOR,
                width * height * PNG_PIXELS,
                data,
                (width, height),
                inflated,
            )
        if data.startswith(jpeg.SOI):
            width, height, progressive, arithmetic = jpeg.header(data)
            self._check_pixels(width, height, "JPEG")
            passes = 1.0
            if progressive:
                scans = jpeg.scans(data, jpeg.MAX_SCANS)
                if scans > jpeg.MAX_SCANS:
                    raise FrameError(
                        f"progressive JPEG image has more than {jpeg.MAX_SCANS} scans; the "
                        f"server decodes at most {jpeg.MAX_SCANS} (encoders write about 10)",
                        "corrupt",
                    )
                passes = max(2, scans) / 2
            factor, flag = self._jpeg_reduction(width, height)
            byte_pixels = ARITHMETIC_BYTE_PIXELS if arithmetic else JPEG_BYTE_PIXELS
            work = max(int(width * height * passes), len(data) * byte_pixels)
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
