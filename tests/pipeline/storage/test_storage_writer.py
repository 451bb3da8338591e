"""`PartWriter` on its own: layout, part sizes and order, schema, staging, disk errors, id checks.

Recording in the job store (record-then-publish, crashes, lost replies, recovery) is tested with the real
store in `test_storage_recovery.py`; what every reader sees of the layout in `test_storage_readers.py`.
"""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.jobs.takeover import existing_output
from pipeline.storage import writer as writer_module
from pipeline.storage.rows import class_area_table, records_table, vocabulary_rows
from pipeline.storage.schema import (
    CLASS_AREAS,
    STAGING_DIR,
    STREAM_ID,
    TABLES,
    parts_glob,
    staging_dir,
    stream_dir,
)
from pipeline.storage.writer import (
    PART_NAME_RE,
    OutputDirError,
    PartWriteError,
    PartWriter,
    part_name,
)

VOCAB = ["sky", "car", "tree"]
JOB = "job-1"


def frames_of(make_areas, stream_id, indices, job_id=JOB):
    return class_area_table(
        [make_areas(stream_id, i, [i % 7, 10, 90 - i % 7]) for i in indices], VOCAB, job_id
    )


def part_files(out: Path, table: str = "class_areas") -> list[Path]:
    """Every file in the table dir: all must sit in `<table>/<job_id>/<stream_id>/`, no `key=value` dir."""
    files = sorted(f for f in (out / table).rglob("*") if f.is_file())
    assert all(f.parent.parent.parent == out / table for f in files)
    assert not any("=" in part for f in files for part in f.relative_to(out).parts)
    return files


def staged_files(out: Path) -> list[Path]:
    return sorted(f for f in (out / STAGING_DIR).rglob("*") if f.is_file())


def test_layout_is_job_then_stream_dirs_with_staging_outside_every_table(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", JOB, "cam", epoch=2, max_rows=6) as writer:
        assert (
            writer.dir
            == tmp_path / "class_areas" / JOB / "cam"
            == stream_dir(tmp_path, "class_areas", JOB, "cam")
        )
        assert (
            writer.staging
            == tmp_path / STAGING_DIR / JOB / "class_areas" / "cam"
            == staging_dir(tmp_path, "class_areas", JOB, "cam")
        )
        parts = writer.append(frames_of(make_areas, "cam", range(3)))
        parts += writer.close()
    with PartWriter(tmp_path, "vocabularies", JOB, "cam") as writer:
        writer.append(vocabulary_rows(JOB, "cam", VOCAB))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "_staging",
        "_staging/job-1",
        "_staging/job-1/class_areas",
        "_staging/job-1/class_areas/cam",
        "_staging/job-1/vocabularies",
        "_staging/job-1/vocabularies/cam",
        "class_areas",
        "class_areas/job-1",
        "class_areas/job-1/cam",
        "class_areas/job-1/cam/part-000000000000-000000000001-000002-000000.parquet",
        "class_areas/job-1/cam/part-000000000002-000000000002-000002-000001.parquet",
        "vocabularies",
        "vocabularies/job-1",
        "vocabularies/job-1/cam",
        "vocabularies/job-1/cam/part-000000000000-000000000002-000000-000000.parquet",
    ]
    assert [p.path for p in parts] == part_files(tmp_path)
    assert sorted(map(Path, glob.glob(parts_glob(tmp_path, "class_areas")))) == part_files(tmp_path)
    assert sorted(map(Path, glob.glob(parts_glob(tmp_path, "class_areas", JOB)))) == part_files(tmp_path)
    assert glob.glob(parts_glob(tmp_path, "class_areas", "job-2")) == []
    # the check that refuses to recreate a lost job over its output finds what the writer wrote
    assert existing_output(tmp_path, JOB) and not existing_output(tmp_path, "job-2")
    # a part read on its own, without its directories, still says which job and stream it is: plain strings
    table = pq.read_table(parts[0].path)
    assert pa.string() == STREAM_ID  # plain strings: no dictionary, no hive key type to match
    assert table.schema.field("stream_id").type == pa.string()
    assert table.schema.field("job_id").type == pa.string()
    assert set(table["stream_id"].to_pylist()) == {"cam"} and set(table["job_id"].to_pylist()) == {JOB}


def test_every_table_is_stored_with_plain_string_ids(tmp_path, make_areas):
    for spec in TABLES.values():
        assert spec.schema.field("stream_id").type == pa.string(), spec.name
        assert spec.schema.field("job_id").type == pa.string(), spec.name
        assert spec.schema.names[:2] == ["job_id", "stream_id"], spec.name
    with PartWriter(tmp_path, "class_areas", JOB, "007") as writer:
        writer.append(frames_of(make_areas, "007", [0]))
    [path] = part_files(tmp_path)
    assert path.parent.name == "007" and path.parent.parent.name == JOB
    assert pq.read_schema(path).field("stream_id").type == pa.string()
    assert pq.read_table(path)["stream_id"].to_pylist() == ["007"] * len(VOCAB)


def test_each_part_holds_one_stream_so_its_statistics_name_it(tmp_path, make_areas):
    """One job and stream per part: min == max in the row-group statistics, so a reader that filters on
    `job_id` or `stream_id` can skip another stream's row groups from their statistics."""
    for stream_id in ("cam-a", "cam-b"):
        with PartWriter(tmp_path, "class_areas", JOB, stream_id, max_rows=6) as writer:
            writer.append(frames_of(make_areas, stream_id, range(5)))
    files = part_files(tmp_path)
    assert len(files) == 6
    for path in files:
        meta = pq.read_metadata(path)
        assert meta.num_row_groups == 1
        stats = {
            meta.schema.column(i).name: meta.row_group(0).column(i).statistics
            for i in range(meta.num_columns)
        }
        assert (stats["job_id"].min, stats["job_id"].max) == (JOB, JOB)
        assert stats["stream_id"].min == stats["stream_id"].max == path.parent.name


def test_parts_are_bounded_hold_whole_frames_and_sort_by_name(tmp_path, make_areas):
    writer = PartWriter(tmp_path, "class_areas", JOB, "cam", epoch=3, max_rows=10)
    committed = []
    for i in range(25):
        committed += writer.append(frames_of(make_areas, "cam", [i]))
    committed += writer.close()
    assert sum(p.rows for p in committed) == 75
    assert [p.rows for p in committed] == [9] * 8 + [3]  # 3 whole frames of 3 classes fit in 10 rows
    files = part_files(tmp_path)
    assert [f.name for f in files] == [p.name for p in committed]  # listing order == frame order
    previous_last = -1
    for part, path in zip(committed, files, strict=True):
        table = pq.read_table(path)
        frames = table["frame_index"].to_numpy()
        assert table.num_rows <= 10
        assert (frames[0], frames[-1]) == (part.first_frame, part.last_frame)
        assert part.first_frame > previous_last
        assert part.frames == len(set(frames.tolist()))
        assert part.epoch == 3 and part.stream_id == "cam" and part.table == "class_areas"
        assert part.job_id == JOB
        assert part.last_pts == table["pts_seconds"][-1].as_py()
        assert int(PART_NAME_RE.fullmatch(path.name)["epoch"]) == 3
        previous_last = part.last_frame


def test_a_frame_larger_than_a_part_is_split(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", JOB, "cam", max_rows=2) as writer:
        writer.append(frames_of(make_areas, "cam", [0]))
    assert [pq.read_metadata(f).num_rows for f in part_files(tmp_path)] == [2, 1]


def test_rows_are_sorted_within_a_part(tmp_path, make_areas):
    order = np.random.default_rng(1).permutation(40).tolist()
    with PartWriter(tmp_path, "class_areas", JOB, "cam", max_rows=1000) as writer:
        for i in order:
            table = frames_of(make_areas, "cam", [i])
            writer.append(table.take(np.array([2, 0, 1])))  # classes out of order too
    [path] = part_files(tmp_path)
    table = pq.read_table(path)
    keys = list(zip(table["frame_index"].to_pylist(), table["class_id"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(keys) == 120


def test_schema_is_exactly_the_declared_one(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", JOB, "cam") as writer:
        writer.append(frames_of(make_areas, "cam", range(3)))
    [path] = part_files(tmp_path)
    assert pq.read_schema(path).remove_metadata().equals(CLASS_AREAS)
    assert pq.read_schema(path).names == [
        "job_id", "stream_id", "frame_index", "pts_seconds", "class_id", "class_name", "pixels", "fraction",
        "vocabulary_version",
    ]  # fmt: skip


def test_without_a_recorder_a_part_is_staged_then_published(tmp_path, make_areas):
    seen = []

    def failpoint(point: str) -> None:
        seen.append((point, [f.relative_to(tmp_path) for f in staged_files(tmp_path)], part_files(tmp_path)))

    with PartWriter(tmp_path, "class_areas", JOB, "cam", failpoint=failpoint) as writer:
        writer.append(frames_of(make_areas, "cam", range(2)))
    name = part_name(0, 1, 0, 0)
    assert seen == [
        ("staged", [Path(STAGING_DIR, JOB, "class_areas", "cam", name)], []),
        ("published", [], [tmp_path / "class_areas" / JOB / "cam" / name]),
    ]


def test_no_temporary_file_is_left_or_visible(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", JOB, "cam", max_rows=6) as writer:
        for i in range(10):
            writer.append(frames_of(make_areas, "cam", [i]))
    assert all(PART_NAME_RE.fullmatch(f.name) for f in part_files(tmp_path))
    assert len(part_files(tmp_path)) == 5
    assert staged_files(tmp_path) == []


def test_disk_full_mid_write_publishes_nothing_and_keeps_the_rows(tmp_path, make_areas, monkeypatch):
    writer = PartWriter(tmp_path, "class_areas", JOB, "cam", max_rows=1000)
    writer.append(frames_of(make_areas, "cam", range(50)))
    real_write = os.write
    calls = []

    def write_then_fill_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write, as the OS may do
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module.os, "write", write_then_fill_disk)
    with pytest.raises(PartWriteError) as info:
        writer.flush()
    assert info.value.errno == errno.ENOSPC
    assert f"class_areas/{JOB}/cam/part-" in str(info.value) and "disk is full" in str(info.value)
    assert info.value.path.parent == tmp_path / "class_areas" / JOB / "cam"
    assert len(calls) == 2
    assert part_files(tmp_path) == []
    assert staged_files(tmp_path) == []
    assert writer.buffered_rows == 150

    monkeypatch.setattr(writer_module.os, "write", real_write)
    [part] = writer.close()
    assert part.rows == 150
    assert pq.read_table(part.path).num_rows == 150


def test_reopening_a_writer_never_overwrites_a_part(tmp_path, make_areas):
    for _ in range(2):
        with PartWriter(tmp_path, "class_areas", JOB, "cam", epoch=1) as writer:
            writer.append(frames_of(make_areas, "cam", range(2)))
    names = [f.name for f in part_files(tmp_path)]
    assert len(names) == 2 and names[0] != names[1]


def test_reopening_a_writer_never_reuses_a_staged_name(tmp_path, make_areas):
    staging = staging_dir(tmp_path, "class_areas", JOB, "cam")
    staging.mkdir(parents=True)
    leftover = staging / part_name(0, 1, 1, 0)
    leftover.write_bytes(b"left by a crashed writer of epoch 1")
    with PartWriter(tmp_path, "class_areas", JOB, "cam", epoch=1) as writer:
        [part] = writer.append(frames_of(make_areas, "cam", range(2))) + writer.close()
    assert part.name == part_name(0, 1, 1, 1)
    assert leftover.read_bytes() == b"left by a crashed writer of epoch 1"  # not the writer's to decide


def test_tables_without_frames_span_row_ordinals(tmp_path):
    with PartWriter(tmp_path, "vocabularies", JOB, "cam", max_rows=2) as writer:
        parts = writer.append(vocabulary_rows(JOB, "cam", VOCAB))
        parts += writer.close()
    assert [(p.first_frame, p.last_frame, p.frames, p.last_pts) for p in parts] == [
        (0, 1, 0, None),
        (2, 2, 0, None),
    ]
    record = {"job_id": JOB, "stream_id": "cam", "time": 5.0, "kind": "decode", "message": "boom"}
    with PartWriter(tmp_path, "errors", JOB, "cam", first_ordinal=7) as writer:
        [part] = writer.append(records_table("errors", [record, {**record, "time": 6.0}])) + writer.close()
    assert (part.first_frame, part.last_frame) == (7, 8)
    assert part_files(tmp_path, "errors") == [part.path]
    assert part.name == part_name(7, 8, 0, 0)


def test_rows_of_another_stream_job_or_schema_are_refused(tmp_path, make_areas):
    writer = PartWriter(tmp_path, "class_areas", JOB, "cam")
    with pytest.raises(ValueError, match="another stream"):
        writer.append(frames_of(make_areas, "other", [0]))
    with pytest.raises(ValueError, match="another job"):
        writer.append(frames_of(make_areas, "cam", [0], job_id="job-2"))
    with pytest.raises(ValueError, match="columns"):
        writer.append(frames_of(make_areas, "cam", [0]).drop_columns(["fraction"]))
    assert writer.buffered_rows == 0
    with pytest.raises(ValueError, match="max_rows"):
        PartWriter(tmp_path, "class_areas", JOB, "cam", max_rows=0)
    with pytest.raises(ValueError, match="epoch"):
        PartWriter(tmp_path, "class_areas", JOB, "cam", epoch=-1)
    with pytest.raises(KeyError, match="known tables"):
        PartWriter(tmp_path, "class_area", JOB, "cam")


def test_a_closed_writer_refuses_rows(tmp_path, make_areas):
    writer = PartWriter(tmp_path, "class_areas", JOB, "cam")
    writer.close()
    assert writer.close() == [] and writer.flush() == []
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(frames_of(make_areas, "cam", [0]))


def test_an_error_inside_the_with_block_commits_nothing(tmp_path, make_areas):
    with pytest.raises(ZeroDivisionError), PartWriter(tmp_path, "class_areas", JOB, "cam") as writer:
        writer.append(frames_of(make_areas, "cam", range(3)))
        1 / 0  # noqa: B018
    assert part_files(tmp_path) == [] and staged_files(tmp_path) == []


def test_missing_output_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(OutputDirError, match="does not exist") as info:
        PartWriter(missing, "class_areas", JOB, "cam")
    assert str(missing) in str(info.value) and info.value.path == missing
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        PartWriter(a_file, "class_areas", JOB, "cam")


def test_blocked_table_dir_is_a_clear_error(tmp_path):
    (tmp_path / "class_areas").write_text("not a directory")
    with pytest.raises(
        OutputDirError, match=rf"cannot create .*/class_areas/{JOB}/cam under output directory"
    ) as info:
        PartWriter(tmp_path, "class_areas", JOB, "cam")
    assert info.value.path == tmp_path


def test_blocked_staging_dir_is_a_clear_error(tmp_path):
    (tmp_path / STAGING_DIR).write_text("not a directory")
    with pytest.raises(
        OutputDirError, match=rf"cannot create .*/{STAGING_DIR}/{JOB}/class_areas/cam under output directory"
    ):
        PartWriter(tmp_path, "class_areas", JOB, "cam")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputDirError, match="not writable"):
            PartWriter(out, "class_areas", JOB, "cam")
    finally:
        out.chmod(0o700)


def test_a_lost_race_for_a_staged_name_never_deletes_the_other_writers_file(tmp_path, monkeypatch):
    """Two writers that picked the same part name (two exports of the same error records, see
    `test_storage_errors_table.py`): the one whose exclusive create fails must leave the other's staged
    file alone: that file may be recorded a moment later, and then it is the only copy of those rows."""
    record = {"job_id": JOB, "stream_id": "cam", "time": 1.0, "kind": "decode", "message": "boom"}
    writer = PartWriter(tmp_path, "errors", JOB, "cam")
    theirs = b"the other writer's staged part"
    real_open = os.open

    def other_writer_stages_first(path, flags, mode=0o777, *args, **kwargs):
        # the other writer creates the same staged name between this writer's check and its O_EXCL open
        Path(path).write_bytes(theirs)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(writer_module.os, "open", other_writer_stages_first)
    writer.append(records_table("errors", [record]))
    with pytest.raises(PartWriteError) as info:
        writer.flush()
    monkeypatch.setattr(writer_module.os, "open", real_open)
    assert info.value.errno == errno.EEXIST
    [staged] = staged_files(tmp_path)
    assert staged.read_bytes() == theirs
