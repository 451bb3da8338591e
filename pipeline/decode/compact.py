"""Compact frames: a decoder resizes each frame to the model's input size before it leaves the process.

The model only ever sees the frame at its input size (short side 640, long side at most 2560), so sending
the full frame costs the object store, the network and the replica's memory for nothing: 6 MB a 1080p frame,
24 MB at 4K, against 1.2 MB and 1.2 MB compacted. Class areas still come out at the original resolution,
because post-processing needs the original size, not the pixels (the frame carries it, `original_size`).

The resize is PIL's BILINEAR on uint8, the official evaluation's: on the replica's PIL path
(`resizer="pil"`, the CPU default) a compacted frame gives bit-identical results to the full frame. The
GPU path (`resizer="torch"`) would have resized the full frame on the device with antialiased bilinear
instead; the two resizes differ by at most one grey level (tests/pipeline/san/test_preprocess.py), which is
how far compacted frames are from the replica-resized ones there. Frames already at or below the input
size are sent as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from pipeline.frame_size import resized_size
from pipeline.frames import Frame


def compact_image(image: np.ndarray) -> np.ndarray:
    """`image` (H x W x 3 uint8) at the model's input size; the same array when it already has it."""
    height, width = image.shape[:2]
    size = resized_size(height, width)
    if size == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def compact_frame(frame: Frame) -> Frame:
    """`frame` with its image at the model's input size and its original size noted, when that is smaller
    than the frame; otherwise the frame itself (upscaling in the decoder would only send more bytes)."""
    height, width = frame.image.shape[:2]
    if frame.original_size is not None or height * width <= _input_pixels(height, width):
        return frame
    return dataclasses.replace(frame, image=compact_image(frame.image), original_size=(height, width))


def _input_pixels(height: int, width: int) -> int:
    resized_height, resized_width = resized_size(height, width)
    return resized_height * resized_width
