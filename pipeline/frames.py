"""The two records that travel along the frame path: a decoded frame and its per-class areas.

They are defined once here and imported by every stage (decode -> segment -> aggregate -> sink), so a
stage's input and output types are never re-declared elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame that was selected for analysis.

    Attributes:
        stream_id: the stream (job-spec `id`) the frame belongs to.
        frame_index: 0-based position of the frame in the decoded stream, counted before sampling, so
            sampled frames keep their place on the source's own frame sequence.
        pts_seconds: presentation time on the source's timeline (PTS x time base).
        image: H x W x 3 uint8 RGB pixels, rotation metadata already applied.
        wall_time: `time.time()` when the frame left the decoder; for live sources this is the arrival time.
        original_size: (height, width) of the decoded frame when `image` was compacted to the model's
            input size (`pipeline.decode.compact`); None when `image` is the decoded frame itself.
    """

    stream_id: str
    frame_index: int
    pts_seconds: float
    image: np.ndarray
    wall_time: float
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the decoded frame, whether or not `image` was compacted."""
        return self.original_size or (int(self.image.shape[0]), int(self.image.shape[1]))


@dataclass(frozen=True, slots=True)
class FrameAreas:
    """What segmenting one frame yields for storage: pixel counts per vocabulary class, not score maps.

    Attributes:
        stream_id, frame_index, pts_seconds: copied from the `Frame`.
        height, width: the frame's original resolution; `pixels` sums to height * width.
        pixels: int64 array of length C, pixels whose label is class c (index in the stream's vocabulary).
        latency_seconds: time from the frame leaving the decoder to its areas being ready.
        labels: optional H x W class-index map (uint8 when C <= 255, else uint16), only when a job asks.
        vocabulary_version: which of the stream's vocabularies `pixels` is indexed by (1: the job spec's).
        region_names: the stream's regions, in the job spec's order (empty: the stream has none).
        region_pixels: int64 [R, C]: row r counts the pixels of each class inside region r; a row sums to
            the region's size in pixels at this frame's resolution. None when the stream has no regions.
    """

    stream_id: str
    frame_index: int
    pts_seconds: float
    height: int
    width: int
    pixels: np.ndarray
    latency_seconds: float
    labels: np.ndarray | None = None
    vocabulary_version: int = 1
    region_names: tuple[str, ...] = ()
    region_pixels: np.ndarray | None = None
