"""Changes to a running job in the real job store: streams added and removed, vocabularies replaced."""

from __future__ import annotations

import json

import pytest

from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import UnknownJobError
from pipeline.jobs.stream_changes import (
    StreamChangeError,
    add_stream,
    remove_stream,
    set_vocabulary,
    stored_stream,
    stream_ids,
    stream_stop_requested,
    vocabulary,
    vocabulary_version,
)

JOB = "job-1"


@pytest.fixture
def job(store: JobStore, tmp_path) -> JobStore:
    spec = parse_job_spec(
        {
            "output": str(tmp_path),
            "streams": [{"id": "cam", "source": "rtsp://127.0.0.1/a", "vocabulary": ["car"]}],
        }
    )
    store.create_job(JOB, spec.to_dict(), ["cam"])
    return store


def test_vocabulary_versions_start_after_the_spec(job):
    assert vocabulary_version(job, JOB, "cam") == 1
    assert set_vocabulary(job, JOB, "cam", ["water"]) == 2
    assert set_vocabulary(job, JOB, "cam", ["boat", "dock"]) == 3
    assert vocabulary_version(job, JOB, "cam") == 3
    assert vocabulary(job, JOB, "cam", 2) == ["water"]
    assert vocabulary(job, JOB, "cam", 1) is None  # the job spec's
    with pytest.raises(UnknownJobError, match="no stream 'nosuch'"):
        set_vocabulary(job, JOB, "nosuch", ["x"])
    with pytest.raises(StreamChangeError, match="vocabulary: must list"):
        set_vocabulary(job, JOB, "cam", [])


def test_an_added_stream_joins_the_stored_spec_and_the_snapshot(job, tmp_path):
    new = {"id": "gate", "source": "rtsp://127.0.0.1/b", "vocabulary": ["person"], "live": True}
    add_stream(job, JOB, new)
    assert stream_ids(job, JOB) == ["cam", "gate"]
    assert stored_stream(job, JOB, "gate") == new
    snapshot = job.snapshot(JOB)
    assert snapshot["streams"]["gate"]["status"] == "pending"
    # The stored spec still parses: a job continued after a crash runs both streams.
    assert [s.id for s in parse_job_spec(snapshot["spec"]).streams] == ["cam", "gate"]
    with pytest.raises(StreamChangeError, match="already has a stream 'Gate'") as error:
        add_stream(job, JOB, {**new, "id": "Gate"})  # ids are directory names: case-insensitive
    assert error.value.field == "id"
    with pytest.raises(UnknownJobError):
        add_stream(job, "nosuch", new)


def test_a_finished_job_takes_no_new_stream(job):
    job.set_status(JOB, "running")
    job.set_status(JOB, "completed")
    with pytest.raises(StreamChangeError, match="has ended"):
        add_stream(job, JOB, {"id": "late", "source": "rtsp://127.0.0.1/c", "vocabulary": ["x"]})
    assert stream_ids(job, JOB) == ["cam"]
    assert json.loads(job.r.hget(job.job_key(JOB), "spec"))["streams"][-1]["id"] == "cam"


def test_removing_a_stream_asks_only_that_stream_to_stop(job):
    add_stream(job, JOB, {"id": "gate", "source": "rtsp://127.0.0.1/b", "vocabulary": ["person"]})
    remove_stream(job, JOB, "gate")
    assert stream_stop_requested(job, JOB, "gate")
    assert not stream_stop_requested(job, JOB, "cam")
    assert job.stop_requested(JOB) is None
    with pytest.raises(UnknownJobError):
        remove_stream(job, JOB, "nosuch")
