"""Client-supplied text as the server's logs and messages show it: bounded and escaped.

Shared by the server's parts that quote what a client sent (stream names, sources)
and by the clients, which quote sources the same way.
"""

from __future__ import annotations

# Logs carry client-chosen names and sources; this many characters of one is plenty to
# tell them apart.
NAME_LIMIT = 64


def printable(text: str, limit: int = NAME_LIMIT) -> str:
    """`text` cut to `limit` characters, with control and non-printable characters escaped.

    Whatever a client sends can then go into a log line without forging
    other lines (newlines), corrupting terminals (escapes) or filling disks. A
    backslash is escaped too whenever it appears, so that a name holding the two
    characters `\\n` cannot pass for one holding a newline.
    """
    cut = text[:limit]
    plain = cut.isprintable() and "\\" not in cut
    safe = cut if plain else cut.encode("unicode_escape").decode("ascii")
    return safe + "…" if len(text) > limit else safe
