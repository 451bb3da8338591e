"""The writer and the job store together: a fenced-off writer leaves nothing behind for readers."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore, StaleWriterError
from pipeline.storage.query import run_sql
from pipeline.storage.rows import class_area_table
from pipeline.storage.writer import PartWriter, remove_unrecorded_parts

VOCAB = ["sky", "ground"]


def rows(frames: range):
    areas = [FrameAreas("cam", i, i / 2, 4, 4, np.array([i % 16, 16 - i % 16]), 0.0) for i in frames]
    return class_area_table(areas, VOCAB, "job-1")


def writer(out, store: JobStore, epoch: int, record: bool = True) -> PartWriter:
    on_commit = functools.partial(store.record_part, "job-1", "cam") if record else None
    return PartWriter(out, "class_areas", "cam", epoch=epoch, on_commit=on_commit)


def test_stale_writer_is_rejected_and_recovery_leaves_each_frame_once(tmp_path, store):
    store.create_job("job-1", {}, ["cam"])
    old = writer(tmp_path, store, store.bump_writer_epoch("job-1", "cam"))
    old.append(rows(range(0, 10)))
    old.flush()

    new_epoch = store.bump_writer_epoch("job-1", "cam")  # e.g. the sink was restarted elsewhere
    old.append(rows(range(10, 20)))
    with pytest.raises(StaleWriterError):
        old.flush()

    resume = store.committed_frames("job-1", "cam") + 1
    assert resume == 10
    with writer(tmp_path, store, new_epoch) as new:
        new.append(rows(range(resume, 20)))

    # A crash between publishing and recording leaves an unrecorded part ...
    with writer(tmp_path, store, new_epoch, record=False) as crashed:
        crashed.append(rows(range(20, 25)))
    # ... which the next writer generation removes before it resumes.
    store.bump_writer_epoch("job-1", "cam")
    recorded = [p["part"] for p in store.committed_parts("job-1", "cam", "class_areas")]
    removed = remove_unrecorded_parts(tmp_path, "class_areas", "cam", recorded)
    assert len(removed) == 1
    # what stays visible to readers is exactly what the store recorded, in the hive partition of the stream
    partition = tmp_path / "class_areas" / "stream_id=cam"
    assert removed[0].parent == partition
    assert [p.name for p in (tmp_path / "class_areas").iterdir()] == [partition.name]
    assert sorted(p.name for p in partition.iterdir()) == sorted(recorded)

    counts = run_sql(tmp_path, "SELECT frame_index, count(*) AS n FROM class_areas GROUP BY 1 ORDER BY 1")
    streams = run_sql(tmp_path, "SELECT DISTINCT stream_id FROM class_areas WHERE stream_id = 'cam'")
    assert streams["stream_id"].to_pylist() == ["cam"]
    assert counts["frame_index"].to_pylist() == list(range(20))
    assert set(counts["n"].to_pylist()) == {len(VOCAB)}
    snap = store.snapshot("job-1")["streams"]["cam"]
    assert (snap["written"], snap["last_written_frame"]) == (20, 19)
