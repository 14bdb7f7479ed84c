"""OpenCV's own log, kept to errors in the processes that print for people.

OpenCV warns on stderr, in a format of its own ("[ WARN:0@34.750] global
cap_ffmpeg_impl.hpp:453 ... Stream timeout triggered"), about what the
server and the clients already say in their own words: a corrupt image the
client is told of, a camera index that cannot be opened, a network source
that stalled. Its errors still show.
"""

from __future__ import annotations

import cv2


def errors_only() -> None:
    """OpenCV's log level at errors: set in cv2.utils.logging from OpenCV 5 on, and by
    cv2.setLogLevel (where ERROR is 2) in the 4.x the dependencies allow."""
    opencv_logging = getattr(cv2.utils, "logging", None)
    if opencv_logging is not None:
        opencv_logging.setLogLevel(opencv_logging.LOG_LEVEL_ERROR)
    else:
        cv2.setLogLevel(2)  # type: ignore[attr-defined]  # 4.x only, not in 5.0's stubs
