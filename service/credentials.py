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
# pass, loginpas, token, access_token, api_key, apikey, secret, auth, authorization,
# signature, sig, credential; and cameras' short ones, whole: p, pw, psw, pin.
_SECRET_NAME = re.compile("pass|pas$|pwd|token|key|secret|auth|sig|cred", re.IGNORECASE)
_SECRET_SHORT = frozenset({"p", "pw", "psw", "pin"})


def hide_credentials(source: str, limit: int | None = None) -> str:
    """`source` with a URL's user information (`user:password@`) and the values of its
    secret-looking query parameters replaced by ***; anything else as it is. With
    `limit`, only its first `limit` characters are looked at and kept (a client may send
    megabytes): a URL whose authority runs past them is hidden past its scheme."""
    cut = limit is not None and len(source) > limit
    if cut:
        source = source[:limit]
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source  # a path or a camera index
    if cut and not any(mark in rest for mark in "/?#"):
        return f"{scheme}{sep}{HIDDEN}"  # its user information may end past the cut
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
            if equals and (_SECRET_NAME.search(name) or name.lower() in _SECRET_SHORT):
                parameters[i] = name + equals + HIDDEN
        query = "".join(parameters) + hash_mark + fragment
    return f"{scheme}{sep}{authority}{path}{question}{query}"
