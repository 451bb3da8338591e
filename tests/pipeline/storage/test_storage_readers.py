"""What every common Parquet reader sees of an output directory, as the README tells users to read it.

Two jobs write the same stream ids (as every re-run of the same file does) into one output directory, for
every table. Each reader must read every row of both jobs, with the documented columns in the documented
order and types, ids as strings (also ids that look like numbers, booleans or NULL), and nothing that is
only staged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.alerts import AlertEvent
from pipeline.frames import FrameAreas
from pipeline.storage.query import connect
from pipeline.storage.rows import (
    class_area_table,
    frame_rows,
    records_table,
    region_area_table,
    vocabulary_rows,
)
from pipeline.storage.schema import STAGING_DIR, TABLES, staging_dir
from pipeline.storage.stream_alerts import EventRecord
from pipeline.storage.writer import PartWriter

JOBS = ["job-a", "20240102"]  # a job id that looks like a number must stay a string too
# Ids every reader's type inference would like to turn into something else: an integer with a leading
# zero, a float, NULL, a boolean, NaN, a negative number, a date.
STREAMS = ["007", "1e5", "NULL", "true", "nan", "-1", "1.50", "2024-01-01", "cam-1"]
VOCAB = ["road", "car", "tree"]
FRAMES_PER_STREAM = 4

SQL_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE"}
POLARS_TYPES = {pa.string(): pl.String, pa.int64(): pl.Int64, pa.int32(): pl.Int32, pa.float64(): pl.Float64}
NUMPY_TYPES = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64}


def table_rows(job_id: str, stream_id: str, offset: int) -> dict[str, pa.Table]:
    """One stream's rows of every table; `offset` makes each job's numbers differ."""
    areas = [
        FrameAreas(stream_id, i, i / 2, 10, 10, np.array([10 * i + offset, 20, 80 - 10 * i - offset]), 0.1)
        for i in range(FRAMES_PER_STREAM)
    ]
    ids = {"job_id": job_id, "stream_id": stream_id}
    regional = [
        dataclasses.replace(
            a, region_names=("lane", "007"), region_pixels=np.array([[5, 3, 2], [1, 1, 2 + i]])
        )
        for i, a in enumerate(areas)
    ]
    event = AlertEvent(
        "wet:1.0", "wet", "lane", "road", "closed", 1.0, 99.0, 1.5, 99.5, 0.5 + offset, 1.5, 99.5
    )
    return {
        "class_areas": class_area_table(areas, VOCAB, job_id),
        "frames": frame_rows(areas, [1000.0 * (offset + 1) + i for i in range(len(areas))], job_id),
        "vocabularies": vocabulary_rows(job_id, stream_id, VOCAB),
        "errors": records_table(
            "errors",
            [
                {**ids, "time": 5.0 + offset, "kind": "decode", "message": f"{stream_id}: lost sync"},
                {**ids, "time": 6.0 + offset, "kind": "recovered", "message": "NULL"},
            ],
        ),
        "gaps": records_table(
            "gaps",
            [
                {
                    **ids,
                    "start_pts": 1.0,
                    "end_pts": 2.5,
                    "start_wall": 100.0 + offset,
                    "end_wall": 101.5 + offset,
                    "reason": "reconnect",
                }
            ],
        ),
        "region_areas": region_area_table(regional, {1: VOCAB}, job_id),
        "events": records_table("events", [EventRecord(0, 3, event).row(job_id, stream_id)]),
    }


def as_tuples(table: pa.Table) -> list[tuple]:
    return sorted(tuple(row.values()) for row in table.to_pylist())


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple]]]:
    """The output dir and, per table, every row written (sorted tuples in the documented column order)."""
    root = tmp_path_factory.mktemp("readers")
    expected: dict[str, list[tuple]] = {table: [] for table in TABLES}
    for offset, job_id in enumerate(JOBS):
        for stream_id in STREAMS:
            for table, rows in table_rows(job_id, stream_id, offset).items():
                with PartWriter(root, table, job_id, stream_id, max_rows=5) as writer:
                    writer.append(rows)
                expected[table] += as_tuples(rows)

    # A part that is staged and never recorded (its writer crashed right after staging) must be invisible.
    class Crash(Exception):
        pass

    def crash(point: str) -> None:
        if point == "staged":
            raise Crash

    for table, rows in table_rows(JOBS[0], STREAMS[0], 7).items():
        writer = PartWriter(root, table, JOBS[0], STREAMS[0], epoch=9, failpoint=crash)
        writer.append(rows)
        with pytest.raises(Crash):
            writer.flush()
        assert [f.name for f in staging_dir(root, table, JOBS[0], STREAMS[0]).iterdir()], table
    return root, {table: sorted(rows) for table, rows in expected.items()}


def test_the_directories_are_job_then_stream(out):
    root, _ = out
    assert sorted(p.name for p in root.iterdir()) == sorted([STAGING_DIR, *TABLES])
    for table in TABLES:
        assert sorted(p.name for p in (root / table).iterdir()) == sorted(JOBS)
        for job_id in JOBS:
            assert sorted(p.name for p in (root / table / job_id).iterdir()) == sorted(STREAMS)
    assert (root / STAGING_DIR / JOBS[0]).is_dir()


def duckdb_star_star(table_dir: Path) -> pa.Table:
    return duckdb.sql(f"SELECT * FROM read_parquet('{table_dir}/**/*.parquet')").to_arrow_table()


def duckdb_job_stream(table_dir: Path) -> pa.Table:
    return duckdb.sql(f"SELECT * FROM read_parquet('{table_dir}/*/*/*.parquet')").to_arrow_table()


def duckdb_hive_on(table_dir: Path) -> pa.Table:
    # no `key=value` directory, so asking for hive partitions adds nothing and changes no type
    sql = f"SELECT * FROM read_parquet('{table_dir}/*/*/*.parquet', hive_partitioning = true)"
    return duckdb.sql(sql).to_arrow_table()


def polars_dir(table_dir: Path) -> pa.Table:
    frame = pl.read_parquet(table_dir)
    return frame.to_arrow()


def pyarrow_read_table(table_dir: Path) -> pa.Table:
    return pq.read_table(table_dir)


def pyarrow_dataset_hive(table_dir: Path) -> pa.Table:
    return ds.dataset(table_dir, format="parquet", partitioning="hive").to_table()


def pyarrow_dataset_plain(table_dir: Path) -> pa.Table:
    return ds.dataset(table_dir, format="parquet").to_table()


ARROW_READERS: dict[str, Callable[[Path], pa.Table]] = {
    "duckdb **": duckdb_star_star,
    "duckdb */*/*": duckdb_job_stream,
    "duckdb hive=true": duckdb_hive_on,
    "polars": polars_dir,
    "pq.read_table": pyarrow_read_table,
    "ds.dataset hive": pyarrow_dataset_hive,
    "ds.dataset": pyarrow_dataset_plain,
}


@pytest.mark.parametrize("table", list(TABLES))
def test_duckdb_types_are_the_documented_ones(out, table):
    root, _ = out
    schema = TABLES[table].schema
    for pattern in ("**/*.parquet", "*/*/*.parquet"):
        relation = duckdb.sql(f"SELECT * FROM read_parquet('{root / table}/{pattern}')")
        assert relation.columns == schema.names, pattern
        assert [str(t) for t in relation.types] == [SQL_TYPES[f.type] for f in schema], pattern


@pytest.mark.parametrize("table", list(TABLES))
def test_polars_types_are_the_documented_ones(out, table):
    root, _ = out
    frame = pl.read_parquet(root / table)
    schema = TABLES[table].schema
    assert frame.columns == schema.names
    assert [frame.schema[f.name] for f in schema] == [POLARS_TYPES[f.type] for f in schema]


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("reader", list(ARROW_READERS))
def test_every_reader_reads_every_row_of_both_jobs(out, table, reader):
    root, expected = out
    got = ARROW_READERS[reader](root / table)
    schema = TABLES[table].schema
    assert got.schema.names == schema.names  # documented order, no partition column added
    if not reader.startswith("polars"):  # polars exports large_string; its own types are checked above
        assert got.schema.remove_metadata().equals(schema), got.schema
    for column in ("job_id", "stream_id"):
        values = got[column].to_pylist()
        assert all(isinstance(v, str) for v in values), column
    assert sorted(set(got["job_id"].to_pylist())) == sorted(JOBS)
    assert sorted(set(got["stream_id"].to_pylist())) == sorted(STREAMS)
    assert as_tuples(got) == expected[table]  # every row once, none of the staged ones


@pytest.mark.parametrize("table", list(TABLES))
def test_pandas_reads_every_row_of_both_jobs_with_string_ids(out, table):
    root, expected = out
    frame = pd.read_parquet(root / table)
    schema = TABLES[table].schema
    assert list(frame.columns) == schema.names
    for field in schema:
        column = frame[field.name]
        if field.type == pa.string():
            assert pd.api.types.is_string_dtype(column.dtype), field.name
            assert not isinstance(column.dtype, pd.CategoricalDtype), field.name
            assert all(isinstance(v, str) for v in column.tolist()), field.name
        else:
            assert column.dtype == NUMPY_TYPES[field.type], field.name
    rows = sorted(tuple(r) for r in frame.itertuples(index=False, name=None))
    assert rows == expected[table]
    assert sorted(frame["stream_id"].unique().tolist()) == sorted(STREAMS)


@pytest.mark.parametrize("stream_id", STREAMS)
def test_filtering_on_a_tricky_id_matches_it_as_a_string(out, stream_id):
    root, _ = out
    rows_per_job = FRAMES_PER_STREAM * len(VOCAB)
    pattern = f"{root / 'class_areas'}/*/*/*.parquet"
    count = duckdb.sql(
        f"SELECT job_id, count(*) FROM read_parquet('{pattern}') WHERE stream_id = ? GROUP BY 1 ORDER BY 1",
        params=[stream_id],
    ).fetchall()
    assert count == sorted((job_id, rows_per_job) for job_id in JOBS)
    polars = pl.scan_parquet(pattern).filter(pl.col("stream_id") == stream_id).collect()
    assert polars.height == len(JOBS) * rows_per_job
    pandas = pd.read_parquet(root / "class_areas", filters=[("stream_id", "=", stream_id)])
    assert pandas["stream_id"].tolist() == [stream_id] * (len(JOBS) * rows_per_job)
    arrow = pq.read_table(
        root / "class_areas", filters=[("job_id", "=", JOBS[1]), ("stream_id", "=", stream_id)]
    )
    assert set(arrow["job_id"].to_pylist()) == {JOBS[1]} and arrow.num_rows == rows_per_job


def test_the_query_views_read_both_jobs_or_one(out):
    root, expected = out
    con = connect(root)
    for table in TABLES:
        assert as_tuples(con.sql(f"SELECT * FROM {table}").to_arrow_table()) == expected[table], table
    only = connect(root, job_id=JOBS[1])
    for table in TABLES:
        got = as_tuples(only.sql(f"SELECT * FROM {table}").to_arrow_table())
        assert got == [row for row in expected[table] if row[0] == JOBS[1]], table


def test_a_staged_part_is_in_staging_only(out):
    """The fixture left a valid Parquet part in staging for every table; no table glob can reach it."""
    root, expected = out
    for table in TABLES:
        [staged] = list(staging_dir(root, table, JOBS[0], STREAMS[0]).iterdir())
        assert pq.read_table(staged).num_rows > 0
        assert not staged.is_relative_to(root / table)
        whole_dir = duckdb.sql(f"SELECT count(*) FROM read_parquet('{root / table}/**/*.parquet')")
        assert whole_dir.fetchall() == [(len(expected[table]),)]
