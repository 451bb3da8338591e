"""Builders for handmade `FrameAreas`, so storage tests state their numbers instead of running a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from pipeline.frames import FrameAreas

AreasFactory = Callable[..., FrameAreas]


@pytest.fixture
def make_areas() -> AreasFactory:
    def make(
        stream_id: str,
        frame_index: int,
        pixels: Sequence[int],
        height: int = 10,
        width: int = 10,
        fps: float = 2.0,
    ) -> FrameAreas:
        return FrameAreas(
            stream_id=stream_id,
            frame_index=frame_index,
            pts_seconds=frame_index / fps,
            height=height,
            width=width,
            pixels=np.asarray(pixels, dtype=np.int64),
            latency_seconds=0.01 * frame_index,
        )

    return make
