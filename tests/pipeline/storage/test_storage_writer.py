from __future__ import annotations

import errno
import glob
import os
from collections import Counter
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
from pipeline.storage.schema import CLASS_AREAS, STAGING_DIR, STREAM_ID, parts_glob, stream_dir
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
    """Every file in the table dir: all must sit in a hive partition dir `stream_id=<id>`."""
    files = sorted(f for f in (out / table).rglob("*") if f.is_file())
    assert all(f.parent.parent == out / table and f.parent.name.startswith("stream_id=") for f in files)
    return files


def test_layout_is_hive_partitioned_with_staging_outside_the_table(tmp_path, make_areas):
    with PartWriter(tmp_path, "class_areas", "cam", epoch=2, max_rows=6) as writer:
        assert (
            writer.dir
            == tmp_path / "class_areas" / "stream_id=cam"
            == stream_dir(tmp_path, "class_areas", "cam")
        )
        assert writer.staging == tmp_path / STAGING_DIR / "class_areas" / "cam"
        parts = writer.append(frames_of(make_areas, "cam", range(3)))
        parts += writer.close()
    with PartWriter(tmp_path, "vocabularies", "cam") as writer:
        writer.append(vocabulary_rows("job-1", "cam", VOCAB))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "_staging",
        "_staging/class_areas",
        "_staging/class_areas/cam",
        "_staging/vocabularies",
        "_staging/vocabularies/cam",
        "class_areas",
        "class_areas/stream_id=cam",
        "class_areas/stream_id=cam/part-000000000000-000000000001-000002-000000.parquet",
        "class_areas/stream_id=cam/part-000000000002-000000000002-000002-000001.parquet",
        "vocabularies",
        "vocabularies/stream_id=cam",
        "vocabularies/stream_id=cam/part-000000000000-000000000002-000000-000000.parquet",
    ]
    assert [p.path for p in parts] == part_files(tmp_path)
    assert sorted(map(Path, glob.glob(parts_glob(tmp_path, "class_areas")))) == part_files(tmp_path)
    # a part read on its own, without its directory, still says which stream it is
    table = pq.read_table(parts[0].path)
    assert table.schema.field("stream_id").type == STREAM_ID
    assert set(table["stream_id"].to_pylist()) == {"cam"}


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
    assert "class_areas/stream_id=cam/part-" in str(info.value) and "disk is full" in str(info.value)
    assert info.value.path.parent == tmp_path / "class_areas" / "stream_id=cam"
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
    with pytest.raises(
        OutputDirError, match=r"cannot create .*/class_areas/stream_id=cam under output directory"
    ) as info:
        PartWriter(tmp_path, "class_areas", "cam")
    assert info.value.path == tmp_path


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
    assert {p.parent for p in removed} == {tmp_path / "class_areas" / "stream_id=cam"}
    assert [f.name for f in part_files(tmp_path)] == names[:1]
    assert not list((tmp_path / STAGING_DIR / "class_areas" / "cam").iterdir())


STREAMS = {"cam-1": 4, "cam.2": 3, "123": 5}  # "123" would be typed as an integer by hive inference
ROWS_PER_STREAM = {stream_id: len(VOCAB) * n for stream_id, n in STREAMS.items()}


@pytest.fixture
def dataset(tmp_path, make_areas) -> Path:
    for stream_id, n in STREAMS.items():
        with PartWriter(tmp_path, "class_areas", stream_id, max_rows=6) as writer:
            writer.append(frames_of(make_areas, stream_id, range(n)))
    # a write in progress in another stream must stay invisible to every reader
    staging = tmp_path / STAGING_DIR / "class_areas" / "cam-1"
    (staging / ".part-000000000099-000000000099-000000-000009.parquet.x.tmp").write_bytes(b"PAR1 half")
    assert sorted(d.name for d in (tmp_path / "class_areas").iterdir()) == [
        "stream_id=123",
        "stream_id=cam-1",
        "stream_id=cam.2",
    ]
    return tmp_path


def check_frame(columns: list[str], stream_ids: list[str], frame_indices: list[int]) -> None:
    """The whole table, in the documented column order, each row under its own stream."""
    assert columns == CLASS_AREAS.names  # same order, no duplicated partition column
    assert all(isinstance(s, str) for s in stream_ids)  # "123" stays a string
    assert Counter(stream_ids) == ROWS_PER_STREAM
    frames: dict[str, set[int]] = {}
    for stream_id, frame in zip(stream_ids, frame_indices, strict=True):
        frames.setdefault(stream_id, set()).add(frame)
    assert frames == {stream_id: set(range(n)) for stream_id, n in STREAMS.items()}


SQL_TYPES = ["VARCHAR", "VARCHAR", "BIGINT", "DOUBLE", "INTEGER", "VARCHAR", "BIGINT", "DOUBLE"]


@pytest.mark.parametrize("hive", [True, False])
def test_duckdb_reads_the_layout(dataset, hive):
    pattern = str(dataset / "class_areas" / "*" / "*.parquet")
    table = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = {str(hive).lower()})")
    assert [str(t) for t in table.types] == SQL_TYPES
    arrow = table.to_arrow_table()
    check_frame(arrow.schema.names, arrow["stream_id"].to_pylist(), arrow["frame_index"].to_pylist())


def corrupt_streams(out: Path, *stream_ids: str) -> None:
    """Overwrite every part of these streams with garbage: any reader that opens one fails."""
    for stream_id in stream_ids:
        for path in stream_dir(out, "class_areas", stream_id).iterdir():
            path.write_bytes(b"not parquet")


def test_duckdb_filter_on_stream_id_reads_only_that_partition(dataset):
    pattern = str(dataset / "class_areas" / "*" / "*.parquet")
    sql = f"SELECT stream_id, frame_index, filename FROM read_parquet('{pattern}', hive_partitioning = true, filename = true)"
    rows = duckdb.sql(f"{sql} WHERE stream_id = '123' ORDER BY frame_index").fetchall()
    assert [r[1] for r in rows] == [i for i in range(STREAMS["123"]) for _ in VOCAB]
    assert {r[0] for r in rows} == {"123"}
    assert {Path(r[2]).parent.name for r in rows} == {"stream_id=123"}
    # Proof that the other partitions are pruned, not just filtered: their files are never opened.
    # ("123" sorts first, so DuckDB's bind-time schema read still sees a valid file.)
    corrupt_streams(dataset, "cam-1", "cam.2")
    assert duckdb.sql(f"{sql} WHERE stream_id = '123' ORDER BY frame_index").fetchall() == rows
    with pytest.raises(duckdb.Error):
        duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning = true)").fetchall()


def test_polars_reads_the_layout(dataset):
    table_dir = dataset / "class_areas"
    for frame in (
        pl.read_parquet(table_dir),
        pl.read_parquet(table_dir, hive_partitioning=True),
        pl.scan_parquet(str(table_dir / "*" / "*.parquet"), hive_partitioning=True).collect(),
        pl.scan_parquet(str(table_dir / "**" / "*.parquet"), hive_partitioning=True).collect(),
    ):
        assert frame.schema["stream_id"] == pl.Categorical and frame.schema["class_id"] == pl.Int32
        stream_ids = frame["stream_id"].cast(pl.String).to_list()
        check_frame(frame.columns, stream_ids, frame["frame_index"].to_list())
    filtered = pl.scan_parquet(str(table_dir / "*" / "*.parquet"), hive_partitioning=True).filter(
        pl.col("stream_id") == "cam.2"
    )
    assert filtered.collect()["stream_id"].cast(pl.String).to_list() == ["cam.2"] * ROWS_PER_STREAM["cam.2"]


def test_pandas_and_pyarrow_read_the_layout(dataset):
    frame = pd.read_parquet(dataset / "class_areas")
    assert isinstance(frame["stream_id"].dtype, pd.CategoricalDtype)
    assert sorted(frame["stream_id"].cat.categories) == sorted(STREAMS)
    check_frame(list(frame.columns), frame["stream_id"].astype(str).tolist(), frame["frame_index"].tolist())
    assert frame["class_id"].dtype == np.int32 and frame["pixels"].dtype == np.int64
    only = pd.read_parquet(dataset / "class_areas", filters=[("stream_id", "=", "123")])
    assert only["stream_id"].astype(str).tolist() == ["123"] * ROWS_PER_STREAM["123"]

    hive = ds.HivePartitioning.discover(infer_dictionary=True)  # what pq.read_table / pandas use
    for table in (
        pq.read_table(dataset / "class_areas"),
        ds.dataset(dataset / "class_areas", format="parquet", partitioning=hive).to_table(),
        ds.dataset(dataset / "class_areas", format="parquet").to_table(),  # the stored column only
    ):
        assert table.schema.equals(CLASS_AREAS)
        check_frame(table.schema.names, table["stream_id"].to_pylist(), table["frame_index"].to_pylist())


TRICKY_IDS = ["007", "1e5", "-1", "1.50", "true", "nan", "NULL", "2024-01-01"]


def test_stream_ids_that_look_like_other_types_stay_strings(tmp_path, make_areas):
    for stream_id in TRICKY_IDS:
        with PartWriter(tmp_path, "class_areas", stream_id) as writer:
            writer.append(frames_of(make_areas, stream_id, [0]))
    expected = sorted(s for s in TRICKY_IDS for _ in VOCAB)
    pattern = str(tmp_path / "class_areas" / "*" / "*.parquet")
    by_reader = {
        "duckdb": [r[0] for r in duckdb.sql(f"SELECT stream_id FROM read_parquet('{pattern}')").fetchall()],
        "polars": pl.read_parquet(tmp_path / "class_areas")["stream_id"].cast(pl.String).to_list(),
        "pandas": pd.read_parquet(tmp_path / "class_areas")["stream_id"].astype(str).tolist(),
        "pyarrow": pq.read_table(tmp_path / "class_areas")["stream_id"].to_pylist(),
    }
    for reader, got in by_reader.items():
        assert sorted(got) == expected, reader
    for stream_id in TRICKY_IDS:
        count = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{pattern}') WHERE stream_id = ?", params=[stream_id]
        )
        assert count.fetchall() == [(len(VOCAB),)], stream_id
