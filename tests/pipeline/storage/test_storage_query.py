from __future__ import annotations

import dataclasses

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.alerts import AlertEvent
from pipeline.storage.query import connect, run_sql, summary
from pipeline.storage.rows import (
    class_area_table,
    frame_rows,
    records_table,
    region_area_table,
    vocabulary_rows,
)
from pipeline.storage.schema import TABLES, job_dir
from pipeline.storage.stream_alerts import EventRecord
from pipeline.storage.writer import PartWriter

# Per stream: vocabulary and per-frame pixel counts on a 10x10 frame.
DATA = {
    "cam-a": (["road", "car"], [[100, 0], [50, 50], [80, 20]]),
    "cam-b": (["sky", "tree", "person"], [[10, 90, 0], [30, 60, 10]]),
}


def write_dataset(out, make_areas, job_id="job-1"):
    for stream_id, (vocab, frames) in DATA.items():
        areas = [make_areas(stream_id, i, px) for i, px in enumerate(frames)]
        with PartWriter(out, "class_areas", job_id, stream_id, max_rows=4) as writer:
            writer.append(class_area_table(areas, vocab, job_id))
        with PartWriter(out, "vocabularies", job_id, stream_id) as writer:
            writer.append(vocabulary_rows(job_id, stream_id, vocab))


def test_summary_numbers(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)
    rows = summary(tmp_path).to_pylist()
    got = {
        (r["stream_id"], r["class_name"]): (r["frames"], r["mean_fraction"], r["max_fraction"]) for r in rows
    }
    expected = {
        ("cam-a", "road"): (3, (1.0 + 0.5 + 0.8) / 3, 1.0),
        ("cam-a", "car"): (3, (0.0 + 0.5 + 0.2) / 3, 0.5),
        ("cam-b", "sky"): (2, 0.2, 0.3),
        ("cam-b", "tree"): (2, 0.75, 0.9),
        ("cam-b", "person"): (2, 0.05, 0.1),
    }
    assert got.keys() == expected.keys()
    for key, (frames, mean, peak) in expected.items():
        assert got[key][0] == frames
        assert got[key][1] == pytest.approx(mean)
        assert got[key][2] == pytest.approx(peak)
    assert [(r["stream_id"], r["class_id"]) for r in rows] == sorted(
        (r["stream_id"], r["class_id"]) for r in rows
    )


def test_summary_filters_by_job(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas, job_id="job-1")
    assert summary(tmp_path, job_id="job-2").num_rows == 0
    assert summary(tmp_path, job_id="job-1").num_rows == 5


SQL_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE"}


def view_types(con, name: str) -> list[tuple[str, str]]:
    relation = con.sql(f"SELECT * FROM {name}")
    return [(column, str(t)) for column, t in zip(relation.columns, relation.types, strict=True)]


def write_one_row_per_table(out, make_areas, stream_id="cam-a", job_id="job-1"):
    areas = [make_areas(stream_id, 0, [60, 40])]
    regional = [
        dataclasses.replace(
            areas[0], region_names=("lane",), region_pixels=np.array([[30, 10]], dtype=np.int64)
        )
    ]
    event = EventRecord(
        0, 0, AlertEvent("wet:0.0", "wet", "lane", "sky", "open", 0.0, 100.0, None, None, 0.75, 0.0, 100.0)
    )
    gap = {"start_pts": 1.0, "end_pts": 2.0, "start_wall": 10.0, "end_wall": 11.0, "reason": "reconnect"}
    error = {"time": 5.0, "kind": "decode", "message": "boom"}
    for table, rows in {
        "class_areas": class_area_table(areas, ["sky", "car"], job_id),
        "frames": frame_rows(areas, [100.0], job_id),
        "vocabularies": vocabulary_rows(job_id, stream_id, ["sky", "car"]),
        "errors": records_table("errors", [{"job_id": job_id, "stream_id": stream_id, **error}]),
        "gaps": records_table("gaps", [{"job_id": job_id, "stream_id": stream_id, **gap}]),
        "region_areas": region_area_table(regional, {1: ["sky", "car"]}, job_id),
        "events": records_table("events", [event.row(job_id, stream_id)]),
    }.items():
        with PartWriter(out, table, job_id, stream_id) as writer:
            writer.append(rows)


def test_views_exist_before_any_data_with_the_right_columns(tmp_path, make_areas):
    con = connect(tmp_path)
    empty = {}
    for name, spec in TABLES.items():
        table = con.sql(f"SELECT * FROM {name}").to_arrow_table()
        assert table.num_rows == 0
        assert table.schema.names == spec.schema.names
        # every column, ids included, has the type it is stored with: ids are plain strings
        expected = [(f.name, SQL_TYPES[f.type]) for f in spec.schema]
        assert expected[:2] == [("job_id", "VARCHAR"), ("stream_id", "VARCHAR")]
        assert view_types(con, name) == expected
        assert table.schema.field("stream_id").type == pa.string()
        empty[name] = expected
    assert summary(tmp_path).num_rows == 0

    # once data exists, the views have exactly the same columns and types as the empty ones
    write_one_row_per_table(tmp_path, make_areas)
    con = connect(tmp_path)
    for name in TABLES:
        assert view_types(con, name) == empty[name]
        assert con.sql(f"SELECT DISTINCT stream_id FROM {name}").fetchall() == [("cam-a",)]


def corrupt_job(out, job_id):
    """Garbage in every part of every table of `job_id`: any reader that opens one of them fails."""
    for table in TABLES:
        for path in job_dir(out, table, job_id).rglob("*.parquet"):
            path.write_bytes(b"not parquet")


def test_a_job_filter_opens_only_that_jobs_directory(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas, job_id="job-1")
    write_dataset(tmp_path, make_areas, job_id="job-2")  # same stream ids, another job
    write_one_row_per_table(tmp_path, make_areas, stream_id="cam-a", job_id="job-3")
    sql = "SELECT job_id, stream_id, count(*) AS n FROM class_areas GROUP BY ALL ORDER BY ALL"
    both = run_sql(tmp_path, sql).to_pylist()
    assert [(r["job_id"], r["stream_id"], r["n"]) for r in both] == [
        ("job-1", "cam-a", 6),
        ("job-1", "cam-b", 6),
        ("job-2", "cam-a", 6),
        ("job-2", "cam-b", 6),
        ("job-3", "cam-a", 2),
    ]
    assert run_sql(tmp_path, sql, job_id="job-2").to_pylist() == [r for r in both if r["job_id"] == "job-2"]
    # Garbage in every other job's parts: only a reader that opens them fails, so a job-filtered query
    # that still works proves those files are never opened (not just filtered out).
    corrupt_job(tmp_path, "job-1")
    corrupt_job(tmp_path, "job-3")
    assert run_sql(tmp_path, sql, job_id="job-2").to_pylist() == [r for r in both if r["job_id"] == "job-2"]
    assert summary(tmp_path, job_id="job-2").num_rows == 5
    con = connect(tmp_path, job_id="job-2")
    for table in TABLES:  # every view, not just the one asked about
        con.sql(f"SELECT * FROM {table}").fetchall()
    assert con.sql("SELECT count(*) FROM vocabularies").fetchall() == [(5,)]
    with pytest.raises(duckdb.Error):
        run_sql(tmp_path, "SELECT count(*) FROM class_areas")


def test_a_stream_filter_returns_that_streams_rows_of_every_job(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas, job_id="job-1")
    write_dataset(tmp_path, make_areas, job_id="job-2")
    sql = "SELECT job_id, stream_id, count(*) AS n FROM class_areas WHERE stream_id = ? GROUP BY ALL ORDER BY ALL"
    assert run_sql(tmp_path, sql, ["cam-a"]).to_pylist() == [
        {"job_id": "job-1", "stream_id": "cam-a", "n": 6},
        {"job_id": "job-2", "stream_id": "cam-a", "n": 6},
    ]
    assert run_sql(tmp_path, sql, ["cam-a"], job_id="job-1").to_pylist() == [
        {"job_id": "job-1", "stream_id": "cam-a", "n": 6}
    ]


def test_summary_groups_by_job_when_jobs_share_stream_ids(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas, job_id="job-1")
    write_dataset(tmp_path, make_areas, job_id="job-2")
    rows = summary(tmp_path).to_pylist()
    assert len(rows) == 10
    assert [(r["job_id"], r["stream_id"], r["class_id"]) for r in rows] == sorted(
        (r["job_id"], r["stream_id"], r["class_id"]) for r in rows
    )
    assert {r["frames"] for r in rows if r["stream_id"] == "cam-a"} == {3}  # not 6: jobs are not mixed


def test_an_invalid_job_id_is_refused_before_any_glob(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)
    for bad in ("*", "../job-1", "job-[1]", ""):
        with pytest.raises(ValueError, match="job id"):
            connect(tmp_path, job_id=bad)


def test_hive_looking_dirs_above_the_output_do_not_override_columns(tmp_path, make_areas):
    # DuckDB parses `key=value` anywhere in a path; these must not replace the stored job_id / stream_id.
    out = tmp_path / "job_id=other" / "stream_id=outer"
    out.mkdir(parents=True)
    write_dataset(out, make_areas)
    assert run_sql(out, "SELECT DISTINCT job_id, stream_id FROM class_areas ORDER BY ALL").to_pylist() == [
        {"job_id": "job-1", "stream_id": "cam-a"},
        {"job_id": "job-1", "stream_id": "cam-b"},
    ]
    assert summary(out, job_id="job-1").num_rows == 5
    assert view_types(connect(out), "class_areas")[1] == ("stream_id", "VARCHAR")


def test_views_see_parts_published_after_connecting(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)
    con = connect(tmp_path)
    before = con.sql("SELECT count(*) FROM class_areas").fetchall()[0][0]
    with PartWriter(tmp_path, "class_areas", "job-1", "cam-c") as writer:
        writer.append(class_area_table([make_areas("cam-c", 0, [100])], ["x"], "job-1"))
    assert con.sql("SELECT count(*) FROM class_areas").fetchall()[0][0] == before + 1


def test_run_sql_returns_arrow_and_joins_vocabularies(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)
    result = run_sql(
        tmp_path,
        "SELECT v.class_name, sum(c.pixels) AS pixels FROM class_areas c JOIN vocabularies v "
        "USING (stream_id, class_id) WHERE c.stream_id = ? GROUP BY 1 ORDER BY 1",
        ["cam-b"],
    )
    assert isinstance(result, pa.Table)
    assert result.to_pylist() == [
        {"class_name": "person", "pixels": 10},
        {"class_name": "sky", "pixels": 40},
        {"class_name": "tree", "pixels": 150},
    ]


def test_output_path_with_glob_characters(tmp_path, make_areas):
    out = tmp_path / "run [1]*"
    out.mkdir()
    write_dataset(out, make_areas)
    assert summary(out).num_rows == 5
    assert [
        r["stream_id"]
        for r in run_sql(out, "SELECT DISTINCT stream_id FROM class_areas ORDER BY 1").to_pylist()
    ] == [
        "cam-a",
        "cam-b",
    ]


def test_missing_output_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        connect(tmp_path / "nope")


def test_views_never_show_a_staged_part(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)

    class Crash(Exception):
        pass

    def crash(point):
        if point == "staged":
            raise Crash

    writer = PartWriter(tmp_path, "class_areas", "job-1", "cam-a", epoch=5, failpoint=crash)
    writer.append(class_area_table([make_areas("cam-a", 99, [100, 0])], ["road", "car"], "job-1"))
    with pytest.raises(Crash):
        writer.flush()
    assert list((tmp_path / "_staging").rglob("*.parquet"))
    for job_id in (None, "job-1"):
        assert run_sql(
            tmp_path, "SELECT max(frame_index) AS m FROM class_areas", job_id=job_id
        ).to_pylist() == [{"m": 2}]


def test_a_job_filtered_connection_sees_that_jobs_new_parts_only(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas, job_id="job-1")
    write_dataset(tmp_path, make_areas, job_id="job-2")
    con = connect(tmp_path, job_id="job-1")
    before = con.sql("SELECT count(*) FROM class_areas").fetchall()[0][0]
    for job_id in ("job-1", "job-2"):
        with PartWriter(tmp_path, "class_areas", job_id, "cam-c") as writer:
            writer.append(class_area_table([make_areas("cam-c", 0, [100])], ["x"], job_id))
    assert con.sql("SELECT count(*) FROM class_areas").fetchall()[0][0] == before + 1
    assert con.sql("SELECT DISTINCT job_id FROM class_areas").fetchall() == [("job-1",)]
