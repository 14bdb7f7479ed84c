"""`actionstream demo`'s settings, apart from the demo itself so the command line
can build its flags without loading what the demo runs (OpenCV, the client)."""

from __future__ import annotations

from dataclasses import dataclass

from actionstream.settings import refuse_non_finite, setting

# The demo feed's seed lies outside every range training draws from.
_FEED_SEED = 2_000_000_007


@dataclass(frozen=True)
class DemoConfig:
    model: str | None = setting(
        None, help="ONNX model to serve; unset serves the bundled default model"
    )
    seconds: float = setting(30.0, help="length of the demo feed")
    size: int = setting(192, help="demo camera frame side in pixels (the server resizes)")
    seed: int = setting(_FEED_SEED, help="seed of the demo feed")
    realtime: bool = setting(True, help="send at the feed's frame rate, like a live camera")
    out: str = setting("build/demo", help="folder for the feed, its labels and the server log")
    quiet: bool = setting(False, help="print the summary only")

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
