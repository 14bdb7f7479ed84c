"""`serve --source-allowlist`: the entries it takes, and what it admits, on text and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from actionstream.service.config import ServeConfig
from actionstream.service.source_allowlist import NotAllowed, SourceAllowlist

CAMS = "rtsp://cams.example:554/live, http://[::1]/mjpg/, 2"


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://cams.example:554/live",
        "rtsp://cams.example:554/live/",
        "rtsp://cams.example:554/live/door?channel=1",
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
    assert allowlist.admit(f"{videos}/day1/../day1/a.avi") == str(videos / "day1" / "a.avi")
    for outside in [
        videos / "out.avi",
        other / "b.avi",  # shares the folder's name as a prefix
        videos / ".." / "videos-other" / "b.avi",
    ]:
        with pytest.raises(NotAllowed, match="no folder on this server's source allowlist"):
            allowlist.admit(str(outside))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "names no folder, URL prefix or camera"),
        (" , ,", "names no folder, URL prefix or camera"),
        ("videos", "neither an absolute folder"),
        ("rtsp://", "names no host"),
        ("rtsp://user:pw@cams/live", "without credentials"),
        ("http://cams/live?x=1", "without credentials, query or fragment"),
        ("http://cams:port/", "is not a URL"),
        ("http://cams/a/../b", "'..' in its path"),
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
