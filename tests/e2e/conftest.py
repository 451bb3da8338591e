"""End-to-end fixtures: one local Ray for the module's jobs, and small real videos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from pipeline.sample_video import write_sample_video

VIDEO_SIZE = (96, 128)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A 2-CPU local Ray shared by a module's jobs (run_job reuses an initialised Ray and leaves it up)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        namespace="sanstream-tests",
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "street": write_sample_video(folder / "street.mp4", seconds=3, fps=10, size=VIDEO_SIZE),
        "river": write_sample_video(folder / "river.mkv", seconds=2, fps=12, size=(64, 96)),
    }
