"""One batch's model step, on a batch thread: gather, step, scatter, answer.

The streams' states are gathered along the batch axis, one model step runs
on the batch's decoded frames, and each stream gets back its row of the new
state and its prediction. Which thread runs a batch, and when, is the
batcher's (batcher.py); the streams of a batch are the batch thread's until
their answers reach the loop.
"""

from __future__ import annotations

import time

import numpy as np

from actionstream.service.inference.frames import FrameError
from actionstream.service.inference.model import OnnxStepModel
from actionstream.service.inference.streams import PendingFrame, Stream
from actionstream.service.telemetry.metrics import Metrics
from actionstream.v1 import actionstream_pb2 as pb

# A frame's outcome: its prediction, the client's mistake (FrameError), or a fault of the
# server's own with that one stream (any other exception), which ends only that stream.
Result = pb.Prediction | FrameError | Exception


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class BatchStep:
    """Steps the model once for a batch of streams' decoded frames."""

    def __init__(self, model: OnnxStepModel, metrics: Metrics) -> None:
        self._model = model
        self._metrics = metrics
        self._state_names = [spec.input for spec in model.metadata.states]

    def __call__(
        self,
        batch: list[tuple[Stream, PendingFrame]],
        decoded: list[np.ndarray | FrameError],
    ) -> list[Result]:
        """Each frame's outcome, in the batch's order; `decoded[i]` is batch[i]'s image, or
        why it could not be decoded."""
        images = [image for image in decoded if not isinstance(image, FrameError)]
        if not images:
            return [error for error in decoded if isinstance(error, FrameError)]
        streams = [
            stream
            for (stream, _), image in zip(batch, decoded, strict=True)
            if not isinstance(image, FrameError)
        ]
        # Each stream's (1, ...) state -> the batch's (N, ...), row j for streams[j].
        state = {key: np.concatenate([s.state[key] for s in streams]) for key in self._state_names}
        start = time.perf_counter()
        # N x (H, W, 3) -> (N, H, W, 3); logits (N, C)
        logits, new_state = self._model.step(np.stack(images), state)
        self._metrics.inference.observe(time.perf_counter() - start)
        self._metrics.batch_size.observe(len(images))
        probs = softmax(logits.astype(np.float64))
        results: list[Result] = []
        j = 0
        for (stream, pending), image in zip(batch, decoded, strict=True):
            if isinstance(image, FrameError):
                results.append(image)
                continue
            # (N, ...) -> row j as (1, ...). Copies, not views: a view would keep the
            # whole batch's arrays alive.
            stream.state = {key: value[j : j + 1].copy() for key, value in new_state.items()}
            try:
                results.append(stream.prediction(probs[j], pending))
            except Exception as e:
                results.append(e)  # this stream ends; the others in the batch are answered
            j += 1
        return results
