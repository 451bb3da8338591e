"""A vocabulary changed while a stream runs (what the service's `PUT .../vocabulary` does), with real Ray,
Serve, Redis and Parquet: frames analysed before the change keep the old classes and version 1, frames
after it get the new ones and version 2, every frame exactly once, and the `vocabularies` table holds both.
A writer killed after the change (its restart knows only the spec's vocabulary) changes none of that.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import duckdb
import pytest
import ray

from actors.stream_config import DecoderSettings
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.stream_changes import set_vocabulary
from pipeline.sample_video import write_sample_video
from tests.support.jobs import BackgroundJob

OLD, NEW = ["sky", "road"], ["water", "boat", "dock"]
FRAMES = 40  # every frame of 4 s at 10 fps


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_video(
        tmp_path_factory.mktemp("vocab") / "harbour.mp4", seconds=4, fps=10, size=(48, 64)
    )


def test_rows_before_and_after_a_vocabulary_change_carry_their_own_version(
    local_ray: None, video: Path, tmp_path: Path
) -> None:
    """The writer is killed after the change: its restart knows only the spec's vocabulary until the
    stream tells it the version in use. (The plain change, through the HTTP API, is in test_service.)"""
    job_id = "vocab-change"
    spec = parse_job_spec(
        {
            "job_id": job_id,
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(tmp_path),
            "streams": [{"id": "cam", "source": str(video), "vocabulary": OLD, "sampling": {"every": 1}}],
            "serve": {"batch_size": 2},
        }
    )
    job = BackgroundJob(
        spec,
        settings=DecoderSettings(max_in_flight=2, flush_frames=2, poll_s=0.1),
        show_progress=False,
        commit_interval_s=0.2,
    )
    job.wait_analysed(job_id, "cam", 8)
    assert set_vocabulary(job.store, job_id, "cam", NEW) == 2
    job.wait_analysed(job_id, "cam", 20)
    writer = ray.get_actor(job.store.stream_actors(job_id, "cam")[1])
    os.kill(ray.get(writer.pid.remote()), signal.SIGKILL)
    outcome = job.join()
    assert outcome.status == "completed", outcome

    rows = duckdb.sql(
        f"SELECT frame_index, vocabulary_version, list(class_name ORDER BY class_id), count(*) "
        f"FROM read_parquet('{tmp_path}/class_areas/**/*.parquet') GROUP BY 1, 2 ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == list(range(FRAMES)), "every frame exactly once"
    versions = [r[1] for r in rows]
    switch = versions.index(2)
    assert 8 <= switch < FRAMES - 1, versions
    assert versions == [1] * switch + [2] * (FRAMES - switch), "the change takes effect once, for good"
    for _, version, names, count in rows:
        assert names == (OLD if version == 1 else NEW) and count == len(names)
    vocabularies = duckdb.sql(
        f"SELECT vocabulary_version, list(class_name ORDER BY class_id) "
        f"FROM read_parquet('{tmp_path}/vocabularies/**/*.parquet') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert vocabularies == [(1, OLD), (2, NEW)]
    assert outcome.streams["cam"].recoveries >= 1
