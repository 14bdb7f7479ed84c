"""What `actionstream serve` says of its settings as it starts: the variables that are
no setting (a misspelt one is otherwise ignored without a word), and what differs from
the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os

from actionstream.service.config import ENV_PREFIX, ServeConfig

logger = logging.getLogger(__name__)

# compose.yaml's own ACTIONSTREAM_IMAGE names the image for compose, never the server's.
_OTHER_VARIABLES = frozenset({"ACTIONSTREAM_IMAGE"})
# Kubernetes' service links for a Service named actionstream, where a pod leaves them on
# (deploy/k8s turns them off): ACTIONSTREAM_SERVICE_HOST, ACTIONSTREAM_PORT_50051_TCP...
_SERVICE_LINKS = ("ACTIONSTREAM_SERVICE_", "ACTIONSTREAM_PORT_")


def warn_unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Warns of ACTIONSTREAM_* variables that are no setting: a misspelt one
    (ACTIONSTREAM_GRACE for ACTIONSTREAM_GRACE_SECONDS) is otherwise ignored without a
    word, and the server runs with the default. Returns the warnings."""
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ServeConfig)}
    said = []
    for name in sorted(environ):
        if name.startswith(_SERVICE_LINKS) or name in known | _OTHER_VARIABLES:
            continue
        if name.startswith(ENV_PREFIX):
            close = _closest_setting(name, known)
            hint = f" (did you mean {close}?)" if close else ""
            said.append(f"{name} is not a setting of serve{hint}; it is ignored")
            logger.warning("%s", said[-1])
    return said


def _closest_setting(name: str, known: set[str]) -> str | None:
    """The setting a misspelt variable most likely meant, if one is close. Compared
    without the prefix they all share, which alone made any name "close" to some
    setting (ACTIONSTREAM_BOGUS to ACTIONSTREAM_HOST); one cut short is its setting's."""
    given = name.removeprefix(ENV_PREFIX)
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    begun = [s for s in suffixes if s.startswith(given)]
    # Cut short of one setting only: ACTIONSTREAM_MAX begins five, and names none.
    close = begun if len(begun) == 1 and len(given) >= 3 else []
    close = close or difflib.get_close_matches(given, suffixes, n=1, cutoff=0.75)
    return ENV_PREFIX + close[0] if close else None


def changed_settings(cfg: ServeConfig) -> str:
    """The settings that differ from their defaults, as name=value: what an operator
    changed, to check against what they meant."""
    return ", ".join(
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(cfg)
        if f.default is not dataclasses.MISSING and getattr(cfg, f.name) != f.default
    )
