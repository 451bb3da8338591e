"""The model's input geometry as plain numbers, without torch: the official evaluation resizes the short
side to 640 (the long side capped at 2560) and pads to a multiple of 32.

Kept apart from `pipeline.san.preprocess` so that decoders, which must not load torch (about 1 GB per
process), can compact frames to the model's input size before sending them (`pipeline.decode.compact`).
"""

from __future__ import annotations

SHORT_SIDE = 640
MAX_LONG_SIDE = 2560
SIZE_DIVISIBILITY = 32


def resized_size(
    height: int, width: int, short: int = SHORT_SIDE, max_long: int = MAX_LONG_SIDE
) -> tuple[int, int]:
    """detectron2 `ResizeShortestEdge` sizes: scale the short side to `short`, cap the long side at
    `max_long`, round half up."""
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_long:
        rescale = max_long / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return int(new_h + 0.5), int(new_w + 0.5)


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    """The size after zero padding to a multiple of `divisor` (bottom and right)."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor
