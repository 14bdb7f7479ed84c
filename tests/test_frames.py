"""Frame decoding: what OpenCV would decode, resized to the model, or a precise refusal."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest
from helpers import arithmetic_jpeg, jpeg, png, render

from actionstream.service.inference import png as png_chunks
from actionstream.service.inference.frames import (
    ARITHMETIC_BYTE_PIXELS,
    JPEG_FLOOR,
    PNG_PIXELS,
    FrameDecoder,
    FrameError,
)
from actionstream.training.synth import SynthConfig, render_stream
from actionstream.v1 import actionstream_pb2 as pb

DECODER = FrameDecoder(height=64, width=64, max_bytes=1_000_000, max_pixels=1920 * 1080)


def _smooth_image(height: int, width: int) -> np.ndarray:
    noise = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    return cv2.GaussianBlur(
        cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), 2
    )


def test_png_and_jpeg_at_model_size_decode_exactly_as_opencv() -> None:
    image = render(1, seed=0)[0]
    np.testing.assert_array_equal(DECODER.decode_image(png(image)), image)
    data = jpeg(image)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(DECODER.decode_image(data), expected)


def test_large_jpeg_is_resized_to_the_model_by_averaging() -> None:
    data = jpeg(_smooth_image(480, 640))
    sharp = FrameDecoder(64, 64, 1_000_000, 1920 * 1080, jpeg_floor=1.0)
    out = sharp.decode_image(data)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # A reduced-scale decode that never enlarges (1/4 here) must be close to a full
    # decode + area resize (2.3 grey levels on average on this detailed image)...
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    area = cv2.resize(decoded, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - area).mean() < 3.0
    # ...far closer than bilinear or point sampling (10 and 36 grey levels).
    linear = cv2.resize(decoded, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(linear.astype(int) - area).mean() > 6.0


def _camera_frame(height: int, width: int) -> np.ndarray:
    """A synthetic scene with a camera's sensor noise, as bench/load.py sends."""
    video, _ = render_stream(1, seed=3, cfg=SynthConfig(size=width))
    top = (width - height) // 2
    noise = np.random.default_rng(0).normal(0, 5.6, (height, width, 3))
    return np.clip(video[0, top : top + height] + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("floor", "size", "decoded"),
    [
        (JPEG_FLOOR, (640, 480), (80, 60)),  # 60 rows cover 7/8 of the model's 64
        (1.0, (640, 480), (160, 120)),
        (JPEG_FLOOR, (1920, 1080), (240, 135)),
        (JPEG_FLOOR, (320, 240), (80, 60)),
        (JPEG_FLOOR, (100, 80), (100, 80)),  # no reduced scale leaves enough
    ],
)
def test_jpeg_decode_scale_follows_the_floor(
    floor: float, size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    decoder = FrameDecoder(64, 64, 1_000_000, 1920 * 1080, jpeg_floor=floor)
    width, height = size
    data = jpeg(_smooth_image(height, width))
    checked = decoder.check(pb.Frame(encoded=data))
    assert (checked.width, checked.height) == decoded
    flag = checked.flag
    assert cv2.imdecode(np.frombuffer(data, np.uint8), flag).shape[:2] == decoded[::-1]
    assert decoder.decode_image(data).shape == (64, 64, 3)


def test_a_camera_frame_decoded_at_one_eighth_is_close_to_a_full_decode() -> None:
    data = jpeg(_camera_frame(480, 640))
    assert DECODER.check(pb.Frame(encoded=data)).width == 80  # the default floor: 1/8
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    area = cv2.resize(decoded, (64, 64), interpolation=cv2.INTER_AREA)
    # 0.7 grey levels on average over bench/load.py's frames; bilinear from the full
    # frame is several times further off.
    difference = np.abs(DECODER.decode_image(data).astype(int) - area).mean()
    assert difference < 1.5
    linear = cv2.resize(decoded, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(linear.astype(int) - area).mean() > 2 * difference


def test_small_frames_are_enlarged() -> None:
    out = DECODER.decode_image(png(_smooth_image(32, 48)))
    assert out.shape == (64, 64, 3)


def test_raw_rgb_is_turned_into_bgr() -> None:
    image = render(1, seed=1)[0]
    rgb = np.ascontiguousarray(image[..., ::-1])
    raw = pb.RawImage(data=rgb.tobytes(), width=64, height=64, format=pb.PIXEL_FORMAT_RGB)
    np.testing.assert_array_equal(DECODER.decode_raw(raw), image)
    raw = pb.RawImage(data=image.tobytes(), width=64, height=64, format=pb.PIXEL_FORMAT_BGR)
    np.testing.assert_array_equal(DECODER.decode(pb.Frame(raw=raw)), image)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of one colour: tiny on the wire, width*height*3 bytes once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte + black RGB pixels
    pixels = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("frame", "reason", "message"),
    [
        (pb.Frame(), "missing", "frame carries no image"),
        (pb.Frame(encoded=b""), "empty", r"image is empty \(0 bytes\)"),
        (
            pb.Frame(encoded=b"GIF89a not today"),
            "not_an_image",
            r"not a JPEG or PNG image \(16 bytes\)",
        ),
        (pb.Frame(encoded=b"\xff\xd8\xff\xe0\x00\x10JFIF"), "corrupt", "corrupt JPEG image"),
        (pb.Frame(encoded=b"\x89PNG\r\n\x1a\n\x00"), "corrupt", "corrupt PNG image"),
        (pb.Frame(encoded=bytes(1_000_001)), "too_many_bytes", "at most 1000000 .max_frame_bytes."),
        (
            pb.Frame(
                raw=pb.RawImage(data=bytes(100), width=64, height=64, format=pb.PIXEL_FORMAT_BGR)
            ),
            "bad_raw",
            r"raw 64x64 image needs 12288 bytes \(width\*height\*3\), got 100",
        ),
        (
            pb.Frame(raw=pb.RawImage(data=bytes(12288), width=64, height=64)),
            "bad_raw",
            "format must be PIXEL_FORMAT_BGR or PIXEL_FORMAT_RGB, got PIXEL_FORMAT_UNSPECIFIED",
        ),
        (
            pb.Frame(raw=pb.RawImage(data=bytes(12288), width=64, height=64, format=7)),
            "bad_raw",
            "format must be PIXEL_FORMAT_BGR or PIXEL_FORMAT_RGB, got 7",
        ),
        (
            pb.Frame(raw=pb.RawImage(width=4000, height=3000, format=pb.PIXEL_FORMAT_RGB)),
            "too_many_pixels",
            "raw image is 4000x3000 = 12000000 pixels",
        ),
    ],
)
def test_bad_frames_are_refused_with_a_reason(frame: pb.Frame, reason: str, message: str) -> None:
    with pytest.raises(FrameError, match=message) as err:
        DECODER.decode(frame)
    assert err.value.reason == reason


def test_truncated_jpeg_is_refused() -> None:
    data = jpeg(render(1, seed=2)[0])
    with pytest.raises(FrameError, match="corrupt JPEG image") as err:
        DECODER.decode_image(data[:200])
    assert err.value.reason == "corrupt"


def test_a_corrupt_frame_is_named_by_its_own_size_not_the_reduced_decode() -> None:
    image = cv2.resize(render(1, seed=2)[0], (640, 480))
    data = jpeg(image)
    assert DECODER.check(pb.Frame(encoded=data)).width < 640  # decoded at reduced scale
    with pytest.raises(FrameError, match=r"corrupt JPEG image \(\d+ bytes, 640x480\)"):
        DECODER.decode_image(data[:1500])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _bomb_png(15_000, 15_000)  # 675 MB of pixels in about 650 KB
    assert len(bomb) < DECODER.max_bytes
    with pytest.raises(FrameError, match="PNG image is 15000x15000 = 225000000 pixels") as err:
        DECODER.decode_image(bomb)
    assert err.value.reason == "too_many_pixels"
    # The same construction within the limit is a real image that decodes.
    assert DECODER.decode_image(_bomb_png(640, 480)).shape == (64, 64, 3)


def test_jpeg_dimensions_are_read_from_the_header() -> None:
    small = FrameDecoder(height=64, width=64, max_bytes=1_000_000, max_pixels=320 * 240)
    with pytest.raises(FrameError, match="JPEG image is 640x480 = 307200 pixels"):
        small.decode_image(jpeg(_smooth_image(480, 640)))


def _checked(data: bytes) -> tuple[int, int, int]:
    checked = DECODER.check(pb.Frame(encoded=data))
    return checked.width, checked.height, checked.work


def test_a_jpeg_costs_its_full_size_and_a_progressive_one_its_scans_too() -> None:
    image = _smooth_image(1080, 1920)
    # Decoded at 1/8 (240x135), but entropy decoding still reads every pixel.
    assert _checked(jpeg(image)) == (240, 135, 1920 * 1080)
    progressive = bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])
    scans = progressive.count(b"\xff\xda")
    assert scans >= 6  # libjpeg's progressive script
    assert _checked(progressive) == (240, 135, 1920 * 1080 * scans // 2)
    # A PNG's pixel costs about eight of a JPEG's: inflating, unfiltering, resizing.
    assert _checked(png(np.full((1080, 1920, 3), 7, np.uint8)))[2] == 1920 * 1080 * PNG_PIXELS
    assert _checked(png(np.full((240, 320, 3), 7, np.uint8)))[2] < 1920 * 1080
    assert _checked(png(np.full((480, 640, 3), 7, np.uint8)))[2] > 1920 * 1080


def test_a_jpeg_denser_than_eight_bits_a_pixel_counts_by_its_bytes() -> None:
    # Entropy decoding costs by the byte: 1920x1080 of noise at quality 95 (5 MB) took
    # 28-42 ms at 1/8, counted as exactly a --heavy-pixels image by its pixels alone.
    noise = np.random.default_rng(1).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    dense = bytes(cv2.imencode(".jpg", noise, params)[1])
    assert len(dense) * 8 > 8 * 480 * 270
    decoder = FrameDecoder(64, 64, max_bytes=8 << 20, max_pixels=1920 * 1080)
    assert decoder.check(pb.Frame(encoded=dense)).work == len(dense)
    # A camera's frame, a few bits a pixel at most, counts its pixels; and so does a
    # detailed scene at quality 95 (a photograph: 4.6 bits a pixel at 4:2:0, 5.1 at 4:2:2).
    camera = jpeg(_smooth_image(270, 480))
    assert decoder.check(pb.Frame(encoded=camera)).work == 480 * 270
    fine = bytes(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 75])[1])
    assert 4 * 480 * 270 < len(fine) * 8 < 8 * 480 * 270
    assert decoder.check(pb.Frame(encoded=fine)).work == 480 * 270


def test_an_arithmetic_coded_jpeg_counts_its_bytes_at_their_cost() -> None:
    # Arithmetic decoding took 105-130 ns a byte at 1/8 here, about 12 times Huffman's: a
    # 1920x1080 frame of noise at quality 90 (460 KB, 53 ms) counted exactly a
    # --heavy-pixels image by its pixels, and shared the batches.
    noise = np.random.default_rng(2).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    huffman = bytes(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 75])[1])
    arithmetic = arithmetic_jpeg(huffman)
    assert arithmetic[:2] == b"\xff\xd8" and b"\xff\xc9" in arithmetic  # SOF9
    decoder = FrameDecoder(64, 64, max_bytes=8 << 20, max_pixels=1920 * 1080)
    assert decoder.check(pb.Frame(encoded=huffman)).work == 480 * 270
    checked = decoder.check(pb.Frame(encoded=arithmetic))
    assert checked.work == len(arithmetic) * ARITHMETIC_BYTE_PIXELS > 480 * 270
    # The same pixels, decoded: arithmetic coding is lossless over the Huffman file's.
    assert np.array_equal(decoder.decode_image(arithmetic), decoder.decode_image(huffman))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload).to_bytes(4, "big")
    return len(payload).to_bytes(4, "big") + kind + payload + crc


def test_a_png_is_decoded_without_the_chunks_its_pixels_do_not_come_from() -> None:
    # libpng inflates each compressed text chunk it reads (zTXt, iTXt) although no pixel
    # comes from one: 100 of them in an 8x8 frame took 4.8 s to decode.
    image = render(1, seed=9)[0]
    plain = png(image)
    metadata = [
        _chunk(b"gAMA", (100_000).to_bytes(4, "big")),
        _chunk(b"sBIT", bytes((4, 4, 4))),
        _chunk(b"bKGD", bytes(6)),
        _chunk(b"iCCP", b"profile\0\0" + zlib.compress(bytes(1000))),
        _chunk(b"tEXt", b"Software\0a camera"),
        _chunk(b"zTXt", b"comment\0\0" + zlib.compress(bytes(7_900_000), 9)),
        _chunk(b"iTXt", b"XML\0\1\0\0\0" + zlib.compress(bytes(7_900_000), 9)),
    ]
    after_header = 8 + 25  # the signature, then IHDR's length, type, 13 bytes and CRC
    dressed = plain[:after_header] + b"".join(metadata) + plain[after_header:]
    assert png_chunks.pixel_chunks(dressed) == plain
    assert png_chunks.pixel_chunks(plain) is plain  # nothing to leave out: no copy
    # Its pixels are the ones OpenCV reads from the whole file.
    whole = cv2.imdecode(np.frombuffer(dressed, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(whole, image)
    assert np.array_equal(DECODER.decode_image(dressed), DECODER.decode_image(plain))
    # An eXIf chunk's orientation is kept: OpenCV turns the image to it (6: 90 degrees).
    wide = np.ascontiguousarray(image[:48])
    orientation = b"MM\0*" + bytes((0, 0, 0, 8, 0, 1, 1, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0))
    turned = png(wide)
    turned = turned[:after_header] + _chunk(b"eXIf", orientation + bytes(4)) + turned[33:]
    as_opencv = cv2.imdecode(np.frombuffer(turned, np.uint8), cv2.IMREAD_COLOR)
    assert as_opencv.shape == (64, 48, 3)  # turned from 48x64
    assert np.array_equal(DECODER.decode_image(turned), DECODER.fit(as_opencv))


def test_a_progressive_jpeg_of_too_many_scans_is_refused() -> None:
    # Each scan is another pass over the image: 1,000 of them took 5.4 s at 3840x2160,
    # from a file of 75 KB. Repeating a valid scan makes such a file.
    data = bytes(cv2.imencode(".jpg", _smooth_image(64, 64), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])
    last = data.rfind(b"\xff\xda")
    bomb = data[:last] + data[last:-2] * 100 + data[-2:]
    assert cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(FrameError, match="more than 64 scans") as err:
        DECODER.check(pb.Frame(encoded=bomb))
    assert err.value.reason == "corrupt"


def test_a_jpeg_header_walk_is_bounded() -> None:
    # Two million empty APP0 segments before the frame header took 0.8 s to walk on
    # the event loop; the walk gives up after a bounded number of them.
    data = jpeg(render(1, seed=3)[0])
    padded = data[:2] + b"\xff\xe0\x00\x02" * 5_000 + data[2:]
    assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(FrameError, match="no valid frame header"):
        DECODER.check(pb.Frame(encoded=padded))
    filled = data[:2] + b"\xff" * 5_000 + data[2:]  # fill bytes are markers' padding
    with pytest.raises(FrameError, match="no valid frame header"):
        DECODER.check(pb.Frame(encoded=filled))
    # A real file's few segments pass.
    assert DECODER.check(pb.Frame(encoded=data[:2] + b"\xff\xe0\x00\x02" * 20 + data[2:]))


def test_a_png_chunk_claiming_more_than_the_file_is_refused() -> None:
    # OpenCV allocates a chunk's declared length before reading it: 75 bytes claiming a
    # 2 GB IDAT made it allocate 2 GB.
    good = png(render(1, seed=4)[0])
    ihdr_end = 8 + 12 + 13
    bomb = good[:ihdr_end] + (2**31 - 1).to_bytes(4, "big") + b"IDAT" + bytes(30)
    with pytest.raises(FrameError, match="claims 2147483647 bytes") as err:
        DECODER.check(pb.Frame(encoded=bomb))
    assert err.value.reason == "corrupt"
    empty = (0).to_bytes(4, "big") + b"tEXt" + zlib.crc32(b"tEXt").to_bytes(4, "big")
    many = good[:ihdr_end] + empty * 2_000 + good[ihdr_end:]
    with pytest.raises(FrameError, match="too many chunks"):
        DECODER.check(pb.Frame(encoded=many))
    # A real file's chunks pass, and so do a few more.
    assert DECODER.check(pb.Frame(encoded=good[:ihdr_end] + empty * 50 + good[ihdr_end:]))


def _png_of(
    width: int, height: int, colour: int, depth: int, interlace: int, extra: int = 0
) -> tuple[bytes, int]:
    """A PNG of random samples written by hand (OpenCV writes neither interlaced nor
    palette PNGs), every row unfiltered; `extra` zero bytes inflated past its rows.
    Returns the file and the bytes its rows take."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    rng = np.random.default_rng(width * height + colour + depth)
    passes = (
        [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]
        if interlace
        else [(0, 0, 1, 1)]
    )  # fmt: skip
    rows = b""
    for x0, y0, dx, dy in passes:
        columns, lines = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and lines > 0:
            size = -(-(columns * channels * depth) // 8)
            for _ in range(lines):
                rows += b"\x00" + rng.integers(0, 256, size, np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header += bytes([depth, colour, 0, 0, interlace])
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
    data = zlib.compress(rows + bytes(extra), 9)
    body = chunk(b"IHDR", header) + palette + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body, len(rows)


@pytest.mark.parametrize(
    ("colour", "depth"), [(0, 1), (0, 8), (0, 16), (2, 8), (2, 16), (3, 4), (3, 8), (4, 8), (6, 16)]
)
@pytest.mark.parametrize("interlace", [0, 1])
def test_every_kind_of_png_is_sized_as_it_inflates_and_decodes(
    colour: int, depth: int, interlace: int
) -> None:
    for width, height in ((37, 23), (1, 1), (9, 3)):
        data, rows = _png_of(width, height, colour, depth, interlace)
        checked = DECODER.check(pb.Frame(encoded=data))
        assert checked.inflated == rows, (width, height)
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert expected is not None
        np.testing.assert_array_equal(DECODER.decode_image(data), DECODER.fit(expected))


def test_png_data_that_inflates_past_its_pixels_is_refused_before_libpng() -> None:
    # libpng inflates the rest of the data after the rows it needs, to throw it away:
    # an 8x8 image in 1 MB whose data inflated to 1 GB took 4 s of a decode thread.
    bomb, rows = _png_of(8, 8, 2, 8, 0, extra=200_000_000)
    assert len(bomb) < DECODER.max_bytes and DECODER.check(pb.Frame(encoded=bomb))
    with pytest.raises(FrameError, match=f"inflates past the {rows} bytes its 8x8 pixels") as err:
        DECODER.decode_image(bomb)
    assert err.value.reason == "corrupt"
    # One byte past them is refused; the rows alone decode.
    with pytest.raises(FrameError, match="inflates past"):
        DECODER.decode_image(_png_of(8, 8, 2, 8, 0, extra=1)[0])
    assert DECODER.decode_image(_png_of(8, 8, 2, 8, 0)[0]).shape == (64, 64, 3)


def test_a_raw_frame_over_the_byte_limit_is_refused() -> None:
    # gRPC's own message limit leaves room above max_frame_bytes; the frame's is ours.
    small = FrameDecoder(height=64, width=64, max_bytes=10_000, max_pixels=1920 * 1080)
    raw = pb.RawImage(data=bytes(64 * 64 * 3), width=64, height=64, format=pb.PIXEL_FORMAT_BGR)
    with pytest.raises(FrameError, match=r"at most 10000 \(max_frame_bytes\)") as err:
        small.check(pb.Frame(raw=raw))
    assert err.value.reason == "too_many_bytes"
