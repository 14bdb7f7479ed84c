"""Which sources WatchSource may open: `serve --source-allowlist`.

`--allow-sources` lets any client name a camera, a file or a URL for the server
to open, so on its own it lets a client reach whatever the server's host can
(files it may read, hosts on its network). An allowlist narrows that to what an
operator names, as a comma-separated list of entries:

- a folder (an absolute path): files inside it, at any depth, once symbolic
  links and `..` are resolved; the server then opens the resolved path, so a link
  swapped after the check cannot lead it elsewhere;
- a URL prefix (`rtsp://cams.example:554/live`): URLs with that scheme and host,
  on that port (any port when the entry names none), whose path is the entry's
  or under it; credentials in the URL (`rtsp://user:pass@host/...`) are allowed;
- a camera index (`0`).

The text is parsed here without importing OpenCV, so ServeConfig can check it as
settings are read. What it cannot stop is told in the README: a host that
redirects, or a playlist (HLS, ffconcat) that names other places, takes FFmpeg
wherever it says.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

# An authority (user:pass@host:port) of these characters only: one that holds others
# (a backslash, spaces) may be split differently by FFmpeg than by urlsplit.
_AUTHORITY = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:@\[\]-]*")


class NotAllowed(ValueError):
    """A source, or an allowlist entry, the list refuses, with the reason in words."""


@dataclass(frozen=True, slots=True)
class _UrlPrefix:
    scheme: str
    host: str
    port: int | None  # None: any port
    path: str  # "" for the whole host, else "/a/b" with no trailing slash

    def admits(self, url: SplitResult, port: int | None) -> bool:
        if (url.scheme.lower(), url.hostname) != (self.scheme, self.host):
            return False
        if self.port is not None and port != self.port:
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
            if entry.isascii() and entry.isdigit():
                cameras.add(int(entry))
            elif "://" in entry:
                urls.append(_url_prefix(entry))
            elif os.path.isabs(entry):
                folders.append(os.path.realpath(entry))
            else:
                raise NotAllowed(
                    f"source allowlist entry {entry!r} is neither an absolute folder, a URL "
                    "prefix (scheme://host[:port][/path]) nor a camera index"
                )
        if not (folders or urls or cameras):
            raise NotAllowed("the source allowlist names no folder, URL prefix or camera")
        return cls(tuple(folders), tuple(urls), frozenset(cameras))

    def admit(self, source: str) -> str:
        """What to open for `source`: itself, or for a file its resolved path. Raises
        NotAllowed (the reason, never the list) when no entry admits it."""
        if source.isascii() and source.isdigit():
            if int(source) in self.cameras:
                return source
            raise NotAllowed("that camera is not on this server's source allowlist")
        if "://" in source:
            _check_url(source, self.urls)
            return source
        resolved = os.path.realpath(source)
        for folder in self.folders:
            if os.path.commonpath([folder, resolved]) == folder:
                return resolved
        raise NotAllowed("that file is in no folder on this server's source allowlist")


def _url_prefix(entry: str) -> _UrlPrefix:
    try:
        url = urlsplit(entry)
        port = url.port
    except ValueError as e:
        raise NotAllowed(f"source allowlist entry {entry!r} is not a URL: {e}") from None
    if not url.hostname or not _AUTHORITY.fullmatch(url.netloc):
        raise NotAllowed(f"source allowlist entry {entry!r} names no host")
    if url.username is not None or url.query or url.fragment:
        raise NotAllowed(
            f"source allowlist entry {entry!r}: give scheme://host[:port][/path], without "
            "credentials, query or fragment"
        )
    _check_path(url.path, f"source allowlist entry {entry!r}", "")
    return _UrlPrefix(url.scheme.lower(), url.hostname, port, url.path.rstrip("/"))


def _check_url(source: str, prefixes: tuple[_UrlPrefix, ...]) -> None:
    try:
        url = urlsplit(source)
        port = url.port
    except ValueError as e:
        raise NotAllowed(f"that URL cannot be read for the source allowlist: {e}") from None
    if not _AUTHORITY.fullmatch(url.netloc) or url.netloc.count("@") > 1:
        raise NotAllowed("that URL's host part holds characters the source allowlist does not take")
    _check_path(url.path, "that URL", " (the source allowlist does not take it)")
    if not any(prefix.admits(url, port) for prefix in prefixes):
        raise NotAllowed("that URL is under no prefix on this server's source allowlist")


def _check_path(path: str, what: str, why: str) -> None:
    # A server resolves /live/../admin (or %2e%2e) to /admin: a prefix check on the text
    # would pass what the server then serves from elsewhere.
    if any(part in (".", "..") for part in unquote(path).split("/")):
        raise NotAllowed(f"{what} has a '.' or '..' in its path{why}")
