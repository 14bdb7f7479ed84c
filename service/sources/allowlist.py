"""Which sources WatchSource may open: `serve --source-allowlist`.

`--allow-sources` lets any client name a camera, a file or a URL for the server
to open, so on its own it lets a client reach whatever the server's host can
(files it may read, hosts on its network). An allowlist narrows that to what an
operator names, as a comma-separated list of entries:

- a folder (an absolute path): files inside it, at any depth, once symbolic
  links are resolved (`.` and `..` are refused), opened here with no link followed
  and handed to FFmpeg as that open file (`opened`). Playlists (`.m3u8`, `.m3u`,
  `.hls`, or a file that starts as one) are refused: FFmpeg follows the paths in
  them anywhere;
- a URL prefix (`rtsp://cams.example:554/live`): URLs with that scheme and host,
  on that port (any port when the entry names none), whose path is the entry's
  or under it; credentials in the URL (`rtsp://user:pass@host/...`) are allowed.
  Options after `?` are refused for the protocols FFmpeg itself reads them for
  (tcp, udp, rtp, srt, rtmp: `?listen=1` would make the server a listener), and
  paths for tcp, udp and rtp, where a path would only choose FFmpeg's demuxer;
- a camera index (`0`).

A URL is split here the way FFmpeg splits it (`av_url_split`): the authority
ends at the first `/`, `?` or `#`, credentials at its last `@`, a `[` opens an
IPv6 host only where the host starts, and the port is all digits. Anything that
reads otherwise is refused rather than guessed at: a check that splits a URL
one way while FFmpeg splits it another lets through a host it never saw.

The text is parsed without importing OpenCV, so ServeConfig checks it as settings
are read. Demuxers that open further sources as their content says (hls, concat,
image2, ...) are kept out by FFmpeg's format_whitelist, which the server sets for
every open under a list (video_source.CONTAINER_FORMATS). What none of this stops is
told in the README: a listed host that redirects takes FFmpeg along.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from actionstream.service.credentials import hide_credentials

_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?",
    re.DOTALL,
)
_USERINFO = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:-]*")
_HOST_PORT = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._~!$&'()*+,;=-]+))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
# URL schemes the server opens: network streams. FFmpeg's other protocols read local files
# and pipes ("file:", "pipe:", and wrappers such as "cache:" or "async:" around them), where
# a FIFO or a device blocks an open in the kernel, past any timeout; files are given as paths.
NETWORK_SCHEMES = frozenset(
    {"http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp"}
)
# FFmpeg reads options from the query of these protocols' URLs itself.
_OPTION_SCHEMES = frozenset({"tcp", "udp", "rtp", "srt", "rtmp", "rtmps"})
# ...and these have no path: one could only pick FFmpeg's demuxer by its name (x.m3u8).
_PATHLESS_SCHEMES = frozenset({"tcp", "udp", "rtp"})
_PLAYLIST_SUFFIXES = (".m3u8", ".m3u", ".hls")
_PLAYLIST_STARTS = (b"#EXTM3U", b"ffconcat")
_PLAYLIST = "that file is a playlist, which the source allowlist does not take"
# Linux's names for a process's open files: FFmpeg opens the very file checked here.
_FDS = "/proc/self/fd"


class NotAllowed(ValueError):
    """A source, or an allowlist entry, the list refuses, with the reason in words."""


class NoSuchFile(Exception):
    """A listed folder holds nothing by that name."""


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str  # lower case
    host: str  # lower case, IPv6 without brackets
    port: int | None
    path: str
    query: str | None
    credentials: bool


@dataclass(frozen=True, slots=True)
class _UrlPrefix:
    scheme: str
    host: str
    port: int | None  # None: any port
    path: str  # "" for the whole host, else "/a/b" with no trailing slash

    def admits(self, url: _Url) -> bool:
        if (url.scheme, url.host) != (self.scheme, self.host):
            return False
        if self.port is not None and url.port != self.port:
            return False
        return not self.path or url.path == self.path or url.path.startswith(self.path + "/")


@dataclass(frozen=True, slots=True)
class SourceAllowlist:
    folders: tuple[str, ...]
    urls: tuple[_UrlPrefix, ...]
    cameras: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> SourceAllowlist:
        """The list from its comma-separated entries; NotAllowed names a bad entry."""
        folders: list[str] = []
        urls: list[_UrlPrefix] = []
        cameras: set[int] = set()
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            if is_camera_index(entry):
                cameras.add(int(entry))
            elif "://" in entry:
                urls.append(_url_prefix(entry))
            elif os.path.isabs(entry) and not has_control_characters(entry):
                folders.append(os.path.realpath(entry))
            else:
                raise NotAllowed(
                    f"source allowlist entry {hide_credentials(entry)!r} is neither an "
                    "absolute folder, a URL prefix (scheme://host[:port][/path]) nor a camera index"
                )
        if not (folders or urls or cameras):
            raise NotAllowed("the source allowlist names no folder, URL prefix or camera")
        return cls(tuple(folders), tuple(urls), frozenset(cameras))

    def admit(self, source: str) -> str:
        """What to open for `source`: itself, or for a file its resolved path. Raises
        NotAllowed (the reason, never the list) when no entry admits it."""
        if has_control_characters(source):
            raise NotAllowed(
                "that source holds a control character (the source allowlist refuses it)"
            )
        if is_camera_index(source):
            if int(source) in self.cameras:
                return source
            raise NotAllowed("that camera is not on this server's source allowlist")
        if "://" in source:
            self._check_url(source)
            return source
        # Refused, not resolved: realpath would take /elsewhere/x/../.. one way or another
        # by whether x is a link, and so tell a client what lies outside the folders.
        if any(part in (".", "..") for part in source.split("/")):
            raise NotAllowed("that path has a '.' or '..' in it (the source allowlist refuses it)")
        try:
            resolved = os.path.realpath(source)
        except OSError as e:  # a link changed as it was read, a loop: ELOOP, EINVAL
            raise NotAllowed(f"that path cannot be resolved ({e.strerror})") from None
        if not any(os.path.commonpath([f, resolved]) == f for f in self.folders):
            raise NotAllowed("that file is in no folder on this server's source allowlist")
        if resolved.lower().endswith(_PLAYLIST_SUFFIXES):
            raise NotAllowed(_PLAYLIST)
        return resolved

    @contextlib.contextmanager
    def opened(self, source: str) -> Iterator[str]:
        """`admit`, and for a file more: the name to hand FFmpeg while inside.

        The file is opened here, from its folder down with no link followed, checked
        (a regular file, no playlist by its content) and handed on as /proc/self/fd/N:
        what FFmpeg reads is what was checked, whatever is swapped in the folder
        meanwhile (a tester's loop swapping a file for a link won 23 times in 60 when
        FFmpeg opened the path itself)."""
        admitted = self.admit(source)
        if "://" in source or is_camera_index(source):
            yield admitted
            return
        # Never a file by name: a link made under that name once it was checked (or found
        # missing) would be followed.
        if not os.path.isdir(_FDS):
            raise NotAllowed("this system cannot hand FFmpeg an open file (no /proc)")
        folder = next(f for f in self.folders if os.path.commonpath([f, admitted]) == f)
        fd = _open_beneath(folder, os.path.relpath(admitted, folder))
        try:
            try:
                start = os.pread(fd, 16, 0).lstrip(b"\xef\xbb\xbf")
            except OSError as e:
                raise NotAllowed(f"that file cannot be read ({e.strerror})") from None
            if start.startswith(_PLAYLIST_STARTS):
                raise NotAllowed(_PLAYLIST)
            yield f"{_FDS}/{fd}"
        finally:
            os.close(fd)

    def _check_url(self, source: str) -> None:
        url = _split(source, "that URL", " (the source allowlist does not take it)")
        if url.query is not None and url.scheme in _OPTION_SCHEMES:
            raise NotAllowed(
                f"that {url.scheme} URL carries options ('?'), which the source allowlist "
                "does not take"
            )
        if url.path not in ("", "/") and url.scheme in _PATHLESS_SCHEMES:
            raise NotAllowed(
                f"that {url.scheme} URL has a path, which the source allowlist does not take"
            )
        if not any(prefix.admits(url) for prefix in self.urls):
            raise NotAllowed("that URL is under no prefix on this server's source allowlist")


def is_camera_index(source: str) -> bool:
    """A camera index as the server reads one: ASCII digits only ("²" is a digit to
    str.isdigit(), yet int() refuses it)."""
    return source.isascii() and source.isdigit()


def has_control_characters(text: str) -> bool:
    # Parsers part ways over them: Python's urlsplit drops tabs and newlines anywhere,
    # FFmpeg reads a port as far as its digits go, and a NUL ends FFmpeg's string where
    # Python's goes on. In a log line, a newline forges another.
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _url_prefix(entry: str) -> _UrlPrefix:
    what = f"source allowlist entry {hide_credentials(entry)!r}"
    if has_control_characters(entry):
        raise NotAllowed(f"{what} holds a control character")
    url = _split(entry, what, "")
    if url.scheme not in NETWORK_SCHEMES:  # it would admit what the server never opens
        raise NotAllowed(f"{what}: the server opens only {', '.join(sorted(NETWORK_SCHEMES))} URLs")
    if url.credentials or url.query is not None:
        raise NotAllowed(
            f"{what}: give scheme://host[:port][/path], without credentials, query or fragment"
        )
    return _UrlPrefix(url.scheme, url.host, url.port, url.path.rstrip("/"))


def _split(text: str, what: str, why: str) -> _Url:
    """`text`'s parts as FFmpeg reads them; NotAllowed for anything read otherwise."""
    match = _URL.fullmatch(text)
    if match is None:
        raise NotAllowed(f"{what} is no scheme://host URL{why}")
    if match["fragment"] is not None:
        raise NotAllowed(f"{what} has a '#' fragment{why}")
    userinfo, at, host_port = match["authority"].rpartition("@")
    if at and (userinfo.count("@") or not _USERINFO.fullmatch(userinfo)):
        raise NotAllowed(f"{what} has credentials that can be read two ways{why}")
    host = _HOST_PORT.fullmatch(host_port)
    if host is None:
        raise NotAllowed(f"{what} names no host:port that can be read one way only{why}")
    port = None if host["port"] is None else int(host["port"])
    if port is not None and not 0 < port < 65536:
        raise NotAllowed(f"{what} has port {port}, which no host has{why}")
    path = match["path"]
    # A server resolves /live/../admin (or %2e%2e, or Tomcat's /live/..;/) to /admin, and
    # some take a backslash for a slash, decode twice, or read overlong UTF-8: a prefix
    # check on the text would pass what the server then serves from elsewhere. FFmpeg's
    # image2 reads "%%" as "%" (a tester's %%2e%%2e), so every '%' must start an escape.
    if "\\" in path or re.search("%(?![0-9A-Fa-f]{2})|%(5c|25)", path, re.IGNORECASE):
        raise NotAllowed(f"{what} has a backslash or a stray or escaped '%' in its path{why}")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise NotAllowed(f"{what} has escapes in its path that are no UTF-8{why}") from None
    if any(part.split(";", 1)[0] in (".", "..") for part in decoded.split("/")):
        raise NotAllowed(f"{what} has a '.' or '..' in its path{why}")
    return _Url(
        scheme=match["scheme"].lower(),
        host=(host["ipv6"] or host["name"]).lower(),
        port=port,
        path=path,
        query=match["query"],
        credentials=bool(at),
    )


def _open_beneath(folder: str, relative: str) -> int:
    """`relative` opened read-only below `folder`, following no link on the way (one
    put there since the path was resolved). NoSuchFile if nothing is there; NotAllowed
    for a link, or for anything but a regular file (a FIFO would block the open, and
    opening a device can act on it: hence the look before, and the check after, since
    the name may be swapped in between)."""
    parts = relative.split(os.sep)
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
            os.close(directory)
            directory = inner
        mode = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise NotAllowed("that source is no regular file (the source allowlist refuses it)")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, dir_fd=directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotAllowed("that source is no regular file (the source allowlist refuses it)")
        return fd
    except FileNotFoundError:
        raise NoSuchFile from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a part over the file system's limit: none there
            raise NoSuchFile from None
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where the path had none
            raise NotAllowed(f"that file changed as it was opened ({e.strerror})") from None
        raise NotAllowed(f"the server cannot open that file ({e.strerror})") from None
    finally:
        os.close(directory)
