"""actionstream: live action recognition for camera streams (CLI and API stubs)."""

import os

# onnxruntime's PyPI builds (1.32 and on) report usage to Microsoft from Linux too: DNS
# lookups of an events host from every process that loads it, a device id and an event
# database written under $XDG_CACHE_HOME (else ~/.cache), and a warning line on stderr
# where that is not writable. A recognition service on a site's network sends nothing
# anywhere, so it is off in every process of this package, unless an operator sets the
# variable. It must be in the environment before onnxruntime starts: here, before any
# module imports it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
