"""The one thread every model step runs on.

onnxruntime already spreads one step over its intra-op threads; letting
several event-loop tasks call it at once would only make them fight for the
same cores. Funnelling every step through one worker also makes this the
single place where a cross-stream micro-batcher takes over: gather the ready
streams' frames and states, run one batched step, scatter the rows back.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from actionstream.service.metrics import Metrics
from actionstream.service.model import OnnxStepModel
from actionstream.service.streams import Stream


class InferenceWorker:
    """Runs model steps for many streams, one at a time, off the event loop."""

    def __init__(self, model: OnnxStepModel, metrics: Metrics) -> None:
        self.model = model
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def step(self, stream: Stream, frame: np.ndarray) -> np.ndarray:
        """Advances `stream` by one (H, W, 3) frame; returns its logits (C,)."""
        loop = asyncio.get_running_loop()
        logits, stream.state = await loop.run_in_executor(
            self._executor, self._run, frame[np.newaxis], stream.state
        )
        return logits[0]

    def _run(
        self, frames: np.ndarray, state: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        start = time.perf_counter()
        result = self.model.step(frames, state)
        self._metrics.inference.observe(time.perf_counter() - start)
        return result

    def close(self) -> None:
        """Waits for the step in flight, then stops the thread."""
        self._executor.shutdown(wait=True)
