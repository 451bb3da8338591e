from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.storage import writer as writer_module
from pipeline.storage.rows import class_area_table, records_table, vocabulary_rows
from pipeline.storage.schema import CLASS_AREAS, STAGING_DIR, stream_dir
from pipeline.storage.writer import (
    PART_NAME_RE,
    OutputDirError,
    PartWriteError,
    PartWriter,
    remove_unrecorded_parts,
)

VOCAB = ["sky", "car", "tree"]


def frames_of(make_areas, stream_id, indices):
    return class_area_table(
        [make_areas(stream_id, i, [i % 7, 10, 90 - i % 7]) for i in indices], VOCAB, "job-1"
    )


def part_files(out: Path, table: str = "class_areas") -> list[Path]:
    return sorted((out / table).glob("*/*"))


def test_parts_are_bounded_hold_whole_frames_and_sort_by_name(tmp_path, make_areas):
    writer = PartWriter(tmp_path, "class_areas", "cam", epoch=3, max_rows=10)
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
        assert int(PART_NAME_RE.fullmatch(path.name)["epoch"]) == 3
        previous_last = part.last_frame


def test_a_frame_larger_than_a_part_is_split(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", "cam", max_rows=2) as writer:
        writer.append(frames_of(make_areas, "cam", [0]))
    assert [pq.read_metadata(f).num_rows for f in part_files(tmp_path)] == [2, 1]


def test_rows_are_sorted_within_a_part(tmp_path, make_areas):
    order = np.random.default_rng(1).permutation(40).tolist()
    with PartWriter(tmp_path, "class_areas", "cam", max_rows=1000) as writer:
        for i in order:
            table = frames_of(make_areas, "cam", [i])
            writer.append(table.take(np.array([2, 0, 1])))  # classes out of order too
    [path] = part_files(tmp_path)
    table = pq.read_table(path)
    keys = list(zip(table["frame_index"].to_pylist(), table["class_id"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(keys) == 120


def test_schema_is_exactly_the_declared_one(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", "cam") as writer:
        writer.append(frames_of(make_areas, "cam", range(3)))
    [path] = part_files(tmp_path)
    assert pq.read_schema(path).remove_metadata().equals(CLASS_AREAS)
    assert pq.read_schema(path).names == [
        "job_id", "stream_id", "frame_index", "pts_seconds", "class_id", "class_name", "pixels", "fraction",
    ]  # fmt: skip


def test_no_temporary_file_is_left_or_visible(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", "cam", max_rows=6) as writer:
        for i in range(10):
            writer.append(frames_of(make_areas, "cam", [i]))
    assert all(PART_NAME_RE.fullmatch(f.name) for f in (tmp_path / "class_areas").rglob("*") if f.is_file())
    assert not [f for f in (tmp_path / STAGING_DIR).rglob("*") if f.is_file()]


def test_disk_full_mid_write_publishes_nothing_and_keeps_the_rows(tmp_path, make_areas, monkeypatch):
    writer = PartWriter(tmp_path, "class_areas", "cam", max_rows=1000)
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
    assert "class_areas/cam/part-" in str(info.value) and "disk is full" in str(info.value)
    assert len(calls) == 2
    assert part_files(tmp_path) == []
    assert not [f for f in (tmp_path / STAGING_DIR).rglob("*") if f.is_file()]
    assert writer.buffered_rows == 150

    monkeypatch.setattr(writer_module.os, "write", real_write)
    [part] = writer.close()
    assert part.rows == 150
    assert pq.read_table(part.path).num_rows == 150


def test_a_rejected_commit_unpublishes_the_part(tmp_path, make_areas):
    class Rejected(Exception):
        pass

    seen = []

    def reject(part):
        seen.append(part.path.exists())
        raise Rejected

    writer = PartWriter(tmp_path, "class_areas", "cam", on_commit=reject)
    writer.append(frames_of(make_areas, "cam", range(4)))
    with pytest.raises(Rejected):
        writer.flush()
    assert seen == [True]
    assert part_files(tmp_path) == []
    assert writer.buffered_rows == 12


def test_reopening_a_writer_never_overwrites_a_part(tmp_path, make_areas):
    for _ in range(2):
        with PartWriter(tmp_path, "class_areas", "cam", epoch=1) as writer:
            writer.append(frames_of(make_areas, "cam", range(2)))
    names = [f.name for f in part_files(tmp_path)]
    assert len(names) == 2 and names[0] != names[1]


def test_tables_without_frames_span_row_ordinals(tmp_path):
    with PartWriter(tmp_path, "vocabularies", "cam", max_rows=2) as writer:
        parts = writer.append(vocabulary_rows("job-1", "cam", VOCAB))
        parts += writer.close()
    assert [(p.first_frame, p.last_frame, p.frames) for p in parts] == [(0, 1, 0), (2, 2, 0)]
    record = {"job_id": "job-1", "stream_id": "cam", "time": 5.0, "kind": "decode", "message": "boom"}
    with PartWriter(tmp_path, "errors", "cam") as writer:
        writer.append(records_table("errors", [record]))
    assert len(part_files(tmp_path, "errors")) == 1


def test_rows_of_another_stream_or_schema_are_refused(tmp_path, make_areas):
    writer = PartWriter(tmp_path, "class_areas", "cam")
    with pytest.raises(ValueError, match="another stream"):
        writer.append(frames_of(make_areas, "other", [0]))
    with pytest.raises(ValueError, match="columns"):
        writer.append(frames_of(make_areas, "cam", [0]).drop_columns(["fraction"]))


def test_missing_output_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(OutputDirError, match="does not exist") as info:
        PartWriter(missing, "class_areas", "cam")
    assert str(missing) in str(info.value) and info.value.path == missing
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        PartWriter(a_file, "class_areas", "cam")


def test_blocked_table_dir_is_a_clear_error(tmp_path):
    (tmp_path / "class_areas").write_text("not a directory")
    with pytest.raises(OutputDirError, match=r"cannot create .*class_areas/cam under output directory"):
        PartWriter(tmp_path, "class_areas", "cam")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputDirError, match="not writable"):
            PartWriter(out, "class_areas", "cam")
    finally:
        out.chmod(0o700)


def test_remove_unrecorded_parts(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", "cam", max_rows=3) as writer:
        for i in range(3):
            writer.append(frames_of(make_areas, "cam", [i]))
    names = [f.name for f in part_files(tmp_path)]
    (tmp_path / STAGING_DIR / "class_areas" / "cam" / ".leftover.tmp").write_bytes(b"partial")
    removed = remove_unrecorded_parts(tmp_path, "class_areas", "cam", recorded=names[:1])
    assert sorted(p.name for p in removed) == names[1:]
    assert [f.name for f in part_files(tmp_path)] == names[:1]
    assert not list((tmp_path / STAGING_DIR / "class_areas" / "cam").iterdir())


STREAMS = {"cam-1": 4, "cam.2": 3, "123": 5}  # "123" would be typed as an integer by hive inference


@pytest.fixture
def dataset(tmp_path, make_areas) -> Path:
    for stream_id, n in STREAMS.items():
        with PartWriter(tmp_path, "class_areas", stream_id, max_rows=6) as writer:
            writer.append(frames_of(make_areas, stream_id, range(n)))
    # a write in progress in another stream must stay invisible to every reader
    staging = tmp_path / STAGING_DIR / "class_areas" / "cam-1"
    (staging / ".part-000000000099-000000000099-000000-000009.parquet.x.tmp").write_bytes(b"PAR1 half")
    assert stream_dir(tmp_path, "class_areas", "123").is_dir()
    return tmp_path


def check_frame(columns: list[str], stream_ids: list[str], n_rows: int) -> None:
    assert columns == CLASS_AREAS.names  # same order, no duplicated partition column
    assert n_rows == 3 * sum(STREAMS.values())
    assert sorted(set(stream_ids)) == sorted(STREAMS)


@pytest.mark.parametrize("hive", [True, False])
def test_duckdb_reads_the_layout(dataset, hive):
    glob = str(dataset / "class_areas" / "*" / "*.parquet")
    table = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = {str(hive).lower()})")
    arrow = table.to_arrow_table()
    check_frame(arrow.schema.names, arrow["stream_id"].to_pylist(), arrow.num_rows)
    assert [str(t) for t in table.types] == ["VARCHAR", "VARCHAR", "BIGINT", "DOUBLE", "INTEGER", "VARCHAR",
                                             "BIGINT", "DOUBLE"]  # fmt: skip
    count = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true) WHERE stream_id = '123'"
    )
    assert count.fetchall() == [(15,)]


def test_polars_reads_the_layout(dataset):
    for frame in (
        pl.read_parquet(dataset / "class_areas"),
        pl.read_parquet(dataset / "class_areas", hive_partitioning=True),
        pl.scan_parquet(str(dataset / "class_areas" / "**" / "*.parquet"), hive_partitioning=True).collect(),
    ):
        check_frame(frame.columns, frame["stream_id"].to_list(), frame.height)
        assert frame.schema["stream_id"] == pl.String and frame.schema["class_id"] == pl.Int32


def test_pandas_and_pyarrow_read_the_layout(dataset):
    frame = pd.read_parquet(dataset / "class_areas")
    check_frame(list(frame.columns), frame["stream_id"].tolist(), len(frame))
    assert frame["class_id"].dtype == np.int32 and frame["pixels"].dtype == np.int64
    table = ds.dataset(dataset / "class_areas", format="parquet").to_table()
    check_frame(table.schema.names, table["stream_id"].to_pylist(), table.num_rows)
    assert table.schema.equals(CLASS_AREAS)
