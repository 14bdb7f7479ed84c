"""One stream's life on the server: its recurrent state, numbering and answers.

The state is a dict of arrays with a leading batch axis of 1, exactly the
model's batch-first layout, so a cross-stream batcher can concatenate the
states of ready streams along axis 0, run one step, and hand row i back to
stream i without reshaping anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from actionstream.v1 import actionstream_pb2 as pb


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class Stream:
    """A live stream: its name, how many labels it wants, and its recurrent state."""

    name: str
    top_k: int
    labels: tuple[str, ...]
    state: dict[str, np.ndarray]
    frames: int = field(default=0, init=False)  # frames accepted so far

    @classmethod
    def open(
        cls,
        options: pb.StreamOptions,
        labels: tuple[str, ...],
        state: dict[str, np.ndarray],
        default_top_k: int,
        default_name: str,
    ) -> Stream:
        """A fresh stream from the client's options; 0 / empty fields take the defaults."""
        top_k = min(options.top_k or default_top_k, len(labels))
        return cls(options.stream_name or default_name, top_k, labels, state)

    def next_sequence(self, client_sequence: int) -> int:
        """Counts a frame and names it: the client's number if it gave one, else 1, 2, 3, ..."""
        self.frames += 1
        return client_sequence or self.frames

    def prediction(self, logits: np.ndarray, sequence: int, timestamp_us: int) -> pb.Prediction:
        """The top-k answer for one frame's logits (C,); latency is filled in when sent."""
        probs = softmax(logits.astype(np.float64))
        best = np.argsort(-probs, kind="stable")[: self.top_k]
        return pb.Prediction(
            sequence=sequence,
            timestamp_us=timestamp_us,
            top=[pb.LabelScore(label=self.labels[i], probability=float(probs[i])) for i in best],
        )
