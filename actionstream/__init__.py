"""actionstream: live action recognition for camera streams (CLI and API stubs)."""
