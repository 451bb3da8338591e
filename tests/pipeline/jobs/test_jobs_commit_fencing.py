"""The writer and the job store together: record first, then publish, so a fenced-off writer or a crash
at any step leaves readers nothing that the store has not recorded."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.query import run_sql
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import class_area_table
from pipeline.storage.schema import staging_dir, stream_dir
from pipeline.storage.writer import CommitRejected, PartWriter, recover_staged_parts

VOCAB = ["sky", "ground"]


class Crash(Exception):
    """The writer's process dies at a failpoint."""


def rows(frames: range):
    areas = [FrameAreas("cam", i, i / 2, 4, 4, np.array([i % 16, 16 - i % 16]), 0.0) for i in frames]
    return class_area_table(areas, VOCAB, "job-1")


def writer(out, store: JobStore, epoch: int, crash_at: str | None = None) -> PartWriter:
    def failpoint(point: str) -> None:
        if point == crash_at:
            raise Crash(point)

    recorder = StreamRecorder(store, "job-1", "cam")
    return PartWriter(out, "class_areas", "job-1", "cam", epoch=epoch, recorder=recorder, failpoint=failpoint)


def recorded(store: JobStore) -> list[str]:
    return sorted(p["part"] for p in store.committed_parts("job-1", "cam", "class_areas"))


def new_generation(out, store: JobStore) -> int:
    """What every new attempt does first: take an epoch, then finish or roll back what is staged."""
    epoch = store.bump_writer_epoch("job-1", "cam")
    recover_staged_parts(out, "class_areas", "job-1", "cam", recorded(store), epoch=epoch)
    return epoch


def test_stale_writer_is_rejected_and_recovery_leaves_each_frame_once(tmp_path, store):
    store.create_job("job-1", {}, ["cam"])
    partition = stream_dir(tmp_path, "class_areas", "job-1", "cam")
    staging = staging_dir(tmp_path, "class_areas", "job-1", "cam")
    old = writer(tmp_path, store, new_generation(tmp_path, store))
    old.append(rows(range(0, 10)))
    old.flush()

    new_epoch = new_generation(tmp_path, store)  # e.g. the sink was restarted elsewhere
    old.append(rows(range(10, 20)))
    with pytest.raises(CommitRejected, match="stale"):
        old.flush()
    assert not list(staging.iterdir())  # the rejected part never reached the table dir, and is gone
    assert sorted(p.name for p in partition.iterdir()) == recorded(store)

    resume = store.committed_frames("job-1", "cam") + 1
    assert resume == 10
    with writer(tmp_path, store, new_epoch) as new:
        new.append(rows(range(resume, 20)))

    # A crash after staging, before the record: an unrecorded part, staged only, invisible ...
    crashed = writer(tmp_path, store, new_epoch, crash_at="staged")
    crashed.append(rows(range(20, 25)))
    with pytest.raises(Crash):
        crashed.flush()
    # ... and a crash after the record, before publishing: committed, not yet visible.
    epoch = new_generation(tmp_path, store)  # rolls the unrecorded part back
    assert not list(staging.iterdir())
    crashed = writer(tmp_path, store, epoch, crash_at="recorded")
    crashed.append(rows(range(20, 25)))
    with pytest.raises(Crash):
        crashed.flush()
    assert len(list(staging.iterdir())) == 1
    assert set(p.name for p in partition.iterdir()) < set(recorded(store))  # visible: recorded ones only
    assert run_sql(tmp_path, "SELECT max(frame_index) AS m FROM class_areas").to_pylist() == [{"m": 19}]

    new_generation(tmp_path, store)  # publishes the committed part
    # what stays visible to readers is exactly what the store recorded, under the job's stream dir
    assert [p.name for p in (tmp_path / "class_areas").iterdir()] == ["job-1"]
    assert [p.name for p in (tmp_path / "class_areas" / "job-1").iterdir()] == ["cam"]
    assert sorted(p.name for p in partition.iterdir()) == recorded(store)
    assert not list(staging.iterdir())

    counts = run_sql(tmp_path, "SELECT frame_index, count(*) AS n FROM class_areas GROUP BY 1 ORDER BY 1")
    streams = run_sql(tmp_path, "SELECT DISTINCT stream_id FROM class_areas WHERE stream_id = 'cam'")
    assert streams["stream_id"].to_pylist() == ["cam"]
    assert counts["frame_index"].to_pylist() == list(range(25))
    assert set(counts["n"].to_pylist()) == {len(VOCAB)}
    snap = store.snapshot("job-1")["streams"]["cam"]
    assert (snap["written"], snap["last_written_frame"]) == (25, 24)
    assert snap["committed"]["class_areas"]["last_pts"] == 12.0


def test_a_commit_without_an_epoch_is_rejected(tmp_path, store):
    store.create_job("job-1", {}, ["cam"])
    never_bumped = writer(tmp_path, store, 0)
    never_bumped.append(rows(range(2)))
    with pytest.raises(CommitRejected, match="no writer epoch yet"):
        never_bumped.flush()
    assert recorded(store) == []
    assert not list(stream_dir(tmp_path, "class_areas", "job-1", "cam").iterdir())
    assert not list(staging_dir(tmp_path, "class_areas", "job-1", "cam").iterdir())
