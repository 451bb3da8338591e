"""What decoders and SAN replicas send each other, kept free of torch and the model.

Decoder actors import this module; if it imported torch (as `actors.segmentation` does), every decoder
process would load the whole model stack for nothing: about 1 GB of memory per stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.frames import FrameAreas
from pipeline.regions import RegionSpec


@dataclass(frozen=True)
class SegmentRequest:
    """One frame to segment. `image` is an ObjectRef to an H x W x 3 uint8 array: the decoded frame, or
    the frame compacted to the model's input size when `original_size` (height, width) is set; `regions`
    are the stream's regions, whose class areas the replica counts too (it caches their masks per frame
    size)."""

    stream_id: str
    frame_index: int
    pts_seconds: float
    wall_time: float
    vocabulary: tuple[str, ...]
    image: Any
    return_labels: bool = False
    vocabulary_version: int = 1
    regions: tuple[RegionSpec, ...] = ()
    original_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class SegmentReply:
    """The frame's areas plus which replica batch computed it (for tests and diagnostics)."""

    areas: FrameAreas
    replica: str
    node_id: str
    batch_number: int
    batch_size: int
    batch_streams: tuple[str, ...]
