"""Camera URLs as logs and messages may show them: without the secrets they carry.

IP cameras take their credentials in the URL (`rtsp://admin:pw@cam/live`,
`http://cam/video.mjpg?user=admin&pwd=pw`). The server logs the stream's name,
which for WatchSource is the URL, and quotes the source in its errors, which
reach its log and every client's; the `stream` client names its stream after
its source. Each of those shows the URL with its secrets replaced.
"""

from __future__ import annotations

import re

HIDDEN = "***"
# Query parameters whose values are secrets by their names' look: password, passwd, pwd,
# pass, token, access_token, api_key, apikey, secret, auth, authorization, signature, sig.
_SECRET_NAME = re.compile("pass|pwd|token|key|secret|auth|sig", re.IGNORECASE)


def hide_credentials(source: str) -> str:
    """`source` with a URL's user information (`user:password@`) and the values of its
    secret-looking query parameters replaced by ***; anything else as it is."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source  # a path or a camera index
    # The authority ends at the first "/", "?" or "#"; its user information at its last "@"
    # (a password may hold "@" too, if unencoded).
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = HIDDEN + "@" + authority.rpartition("@")[2]
    path, question, query = tail.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        # Split, not matched as a whole: linear in the length, whatever a client sends.
        parameters = re.split("([&;])", query)
        for i in range(0, len(parameters), 2):
            name, equals, _ = parameters[i].partition("=")
            if equals and _SECRET_NAME.search(name):
                parameters[i] = name + equals + HIDDEN
        query = "".join(parameters) + hash_mark + fragment
    return f"{scheme}{sep}{authority}{path}{question}{query}"
