"""The one resize rule from a source's frame to the model's input, shared by training
(training/clip_decode.py) and serving (service/inference/frames.py), so the model is served
frames made as its training frames were."""

from __future__ import annotations

import cv2
import numpy as np


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` as (height, width, 3) BGR: area-averaged when it shrinks both ways (no
    aliasing from a large frame), bilinear otherwise. A grey or BGRA image, as some
    decoders hand out, is made BGR first; one already of that size is returned as is."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrinking = h >= height and w >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
