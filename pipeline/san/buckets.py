"""Which images of a batch share a forward pass: a few canvas shapes instead of one forward per padded size.

Streams of a video service come in a handful of shapes (16:9, 4:3, square, portrait), and after SAN's
preprocessing each shape is its own padded size (640 x 1152, 640 x 864, 640 x 640, 1152 x 640). One forward
per size turns a Serve batch of 64 frames into several small forwards, and on a GPU a small forward costs
about as much in launches as in arithmetic. Putting several sizes on one canvas (`pipeline.san.canvas`)
trades that for computing the padding: a size joins a canvas only while no member of it would pay more than
`max_padding` extra pixels (canvas area <= (1 + max_padding) x its own area).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Size = tuple[int, int]

# Extra canvas area a size may pay to share a forward. On CPU every padded pixel is pure extra work and a
# forward has no launch cost to save, so sizes never share; on CUDA half the area again is an estimate of
# where a forward's fixed cost (kernel launches at batch 16 or so) stops paying for the padding, not a
# measurement (bench/model.py --sizes mixed --max-padding measures it).
DEFAULT_MAX_PADDING = {"cpu": 0.0, "cuda": 0.5}


@dataclass
class Bucket:
    """Images `members` (batch indices) run as one forward on a `canvas`-sized tensor."""

    canvas: Size
    members: list[int] = field(default_factory=list)


def _area(size: Size) -> int:
    return size[0] * size[1]


def plan_buckets(padded_sizes: Sequence[Size], max_padding: float) -> list[Bucket]:
    """Group a batch's images by padded size into canvases.

    Sizes are placed largest area first (ties broken by the size), each into the first canvas that can grow
    to hold it without any of its sizes exceeding `max_padding`, so the plan depends on the set of sizes, not
    on the order of the batch. Members keep batch order within a bucket. `max_padding=0` gives one bucket
    per distinct size.
    """
    if max_padding < 0:
        raise ValueError(f"max_padding must be >= 0, got {max_padding}")
    canvases: list[tuple[Size, list[Size]]] = []
    for size in sorted(set(padded_sizes), key=lambda s: (-_area(s), s)):
        for slot, (canvas, sizes) in enumerate(canvases):
            grown = (max(canvas[0], size[0]), max(canvas[1], size[1]))
            if all(_area(grown) <= (1 + max_padding) * _area(member) for member in [*sizes, size]):
                canvases[slot] = (grown, [*sizes, size])
                break
        else:
            canvases.append((size, [size]))
    bucket_of = {size: slot for slot, (_, sizes) in enumerate(canvases) for size in sizes}
    buckets = [Bucket(canvas) for canvas, _ in canvases]
    for index, size in enumerate(padded_sizes):
        buckets[bucket_of[size]].members.append(index)
    return buckets
