"""`serve --source-allowlist`: the entries it takes, and what it admits, on text and files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actionstream.service.config import ServeConfig
from actionstream.service.sources.allowlist import NoSuchFile, NotAllowed, SourceAllowlist

CAMS = "rtsp://cams.example:554/live, http://[::1]/mjpg/, http://[::1]:18081, tcp://cams:9000, 2"


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://cams.example:554/live",
        "rtsp://cams.example:554/live/",
        "rtsp://cams.example:554/live/door?channel=1",  # rtsp options are the camera's
        "tcp://cams:9000",
        "tcp://cams:9000/",
        "RTSP://CAMS.example:554/live/door",  # scheme and host in any case
        "rtsp://admin:secret@cams.example:554/live/door",  # a camera's own credentials
        "http://[::1]:8080/mjpg/a",  # no port in the entry: any
        "http://[::1]/mjpg/a",
        "2",
        "002",
    ],
)
def test_admitted(source: str) -> None:
    assert SourceAllowlist.parse(CAMS).admit(source) == source


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://cams.example:8554/live/door",  # another port
        "rtsp://cams.example/live/door",  # the scheme's default is not the entry's port
        "rtsps://cams.example:554/live/door",  # another scheme
        "rtsp://cams.example.evil:554/live/door",
        "rtsp://cams.example:554@evil:554/live/door",  # credentials that look like the host
        "rtsp://cams.example:554/livestream",  # a prefix of a name, not of the path
        "rtsp://cams.example:554/live/../admin",
        "rtsp://cams.example:554/live/%2E%2e/admin",
        "rtsp://cams.example:554/live/./x",
        "rtsp://a@b@cams.example:554/live/x",
        "rtsp://cams.example\\@evil:554/live/x",  # a backslash FFmpeg may split otherwise
        "rtsp://cams.example:99999/live/x",  # no port at all
        "http://[::2]/mjpg/a",
        # Read one way by urlsplit, another by FFmpeg (which would reach 127.0.0.1:19090, or
        # port 1808, or port 80): found by a tester, each reached a forbidden server.
        "http://127.0.0.1:19090[::1]:18081/secret.avi",
        "http://[::1]x:18081/",
        "rtsp://cams.example:55\t4/live/door",
        "rtsp://cams.example:554/live/door\x00",
        "http://[::1]/mjpg/a#/../../admin",
        # Options FFmpeg reads itself: a listening socket, a local port of the client's.
        "tcp://cams:9000?listen=1",
        "tcp://cams:9000/?listen=1",
        # Paths some servers read otherwise.
        "http://[::1]/mjpg/..\\admin",
        "http://[::1]/mjpg/%5c..%5cadmin",
        "http://[::1]/mjpg/%252e%252e/admin",
        "http://[::1]/mjpg/%%2e%%2e/private/img%d.jpg",  # image2 reads %% as %
        "http://[::1]/mjpg/..;/admin",  # Tomcat's ..
        "http://[::1]/mjpg/%c0%ae%c0%ae/admin",  # overlong UTF-8 for ..
        "tcp://cams:9000/x.m3u8",  # no path in tcp: it would only choose FFmpeg's demuxer
        "0",
        "/etc/passwd",
        "relative/clip.avi",
    ],
)
def test_refused(source: str) -> None:
    with pytest.raises(NotAllowed, match="allowlist"):
        SourceAllowlist.parse(CAMS).admit(source)


def test_files_are_admitted_by_where_they_resolve(tmp_path: Path) -> None:
    videos, other = tmp_path / "videos", tmp_path / "videos-other"
    (videos / "day1").mkdir(parents=True)
    other.mkdir()
    for f in (videos / "day1" / "a.avi", other / "b.avi"):
        f.write_bytes(b"")
    (videos / "in.avi").symlink_to(videos / "day1" / "a.avi")
    (videos / "out.avi").symlink_to(other / "b.avi")
    allowlist = SourceAllowlist.parse(f"{videos}/")
    # The resolved path is what the server opens.
    assert allowlist.admit(str(videos / "day1" / "a.avi")) == str(videos / "day1" / "a.avi")
    assert allowlist.admit(str(videos / "in.avi")) == str(videos / "day1" / "a.avi")
    for outside in [videos / "out.avi", other / "b.avi"]:  # the other shares a prefix
        with pytest.raises(NotAllowed, match="no folder on this server's source allowlist"):
            allowlist.admit(str(outside))
    # Whether /x/../ resolves into a folder depends on whether x is a link: refused
    # outright, so that the answer tells nothing of what lies outside.
    for dotted in [
        f"{videos}/day1/../day1/a.avi",
        f"{other}/../videos/in.avi",
        f"{videos}/./in.avi",
    ]:
        with pytest.raises(NotAllowed, match=r"'\.' or '\.\.'"):
            allowlist.admit(dotted)


def test_playlists_are_refused_whatever_their_name(tmp_path: Path) -> None:
    # FFmpeg follows the paths in an HLS playlist to any local file (a tester's playlist
    # in an allowed folder read a video outside it); ffconcat is refused by its own
    # safe mode, and refused here too.
    (tmp_path / "a.m3u8").write_text("#EXTM3U\n")
    (tmp_path / "b.M3U").write_text("")
    (tmp_path / "c.avi").write_text("#EXTM3U\n#EXTINF:1,\n/elsewhere/secret.avi\n")
    (tmp_path / "d.avi").write_text("ffconcat version 1.0\nfile /elsewhere/secret.avi\n")
    (tmp_path / "e.avi").write_bytes(b"\xef\xbb\xbf#EXTM3U\n")
    allowlist = SourceAllowlist.parse(str(tmp_path))
    for name in ("a.m3u8", "b.M3U", "c.avi", "d.avi", "e.avi"):
        with (
            pytest.raises(NotAllowed, match="is a playlist"),
            allowlist.opened(str(tmp_path / name)),
        ):
            pass


def test_a_file_is_handed_on_as_checked(tmp_path: Path) -> None:
    (tmp_path / "a.avi").write_bytes(b"RIFF")
    allowlist = SourceAllowlist.parse(str(tmp_path))
    with allowlist.opened(str(tmp_path / "a.avi")) as name:
        assert name.startswith("/proc/self/fd/")
        (tmp_path / "a.avi").unlink()  # swapped meanwhile: what was checked is what is read
        (tmp_path / "a.avi").symlink_to("/etc/hostname")
        assert Path(name).read_bytes() == b"RIFF"
    # Nothing there: said so, never handed on by name (a link made under it since would
    # be followed).
    with pytest.raises(NoSuchFile), allowlist.opened(str(tmp_path / "gone.avi")):
        pass


def test_a_digit_that_is_no_camera_index_is_a_file_handed_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "²").write_bytes(b"RIFF")
    monkeypatch.chdir(tmp_path)
    with SourceAllowlist.parse(str(tmp_path)).opened("²") as name:
        assert name.startswith("/proc/self/fd/")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # Opened, a FIFO with no writer would block; a device could act on the open.
    os.mkfifo(tmp_path / "fifo")
    allowlist = SourceAllowlist.parse(str(tmp_path))
    with (
        pytest.raises(NotAllowed, match="no regular file"),
        allowlist.opened(str(tmp_path / "fifo")),
    ):
        pass


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "names no folder, URL prefix or camera"),
        (" , ,", "names no folder, URL prefix or camera"),
        ("videos", "neither an absolute folder"),
        ("rtsp://", "names no host"),
        ("rtsp://user:pw@cams/live", "without credentials"),
        ("http://cams/live?x=1", "without credentials, query or fragment"),
        ("http://cams:port/", "names no host:port"),
        ("http://cams:0/", "has port 0"),
        ("http://cams:65536/", "has port 65536"),
        ("http://cams/\tx", "holds a control character"),
        ("http://cams/#x", "without credentials, query or fragment|'#' fragment"),
        ("http://cams/a/../b", "'..' in its path"),
        # A scheme the server never opens: the entry could admit nothing.
        ("ftp://cams/live", "opens only http, https, rtmp"),
        ("file://srv/videos", "opens only http"),
    ],
)
def test_entries_it_refuses(text: str, why: str) -> None:
    with pytest.raises(NotAllowed, match=why):
        SourceAllowlist.parse(text)


def test_an_allowlist_without_watch_source_is_a_mistake_said_at_once() -> None:
    with pytest.raises(ValueError, match="set allow_sources too"):
        ServeConfig(source_allowlist="/videos")
    with pytest.raises(ValueError, match="neither an absolute folder"):
        ServeConfig(allow_sources=True, source_allowlist="videos")
    assert ServeConfig(allow_sources=True, source_allowlist="/videos, 0").allow_sources
