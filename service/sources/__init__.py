"""Sources the server opens itself for WatchSource: cameras, files and URLs through
OpenCV, and the allowlist that narrows which."""
