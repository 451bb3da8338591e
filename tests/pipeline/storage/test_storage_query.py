from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.storage.query import connect, run_sql, summary
from pipeline.storage.rows import class_area_table, vocabulary_rows
from pipeline.storage.schema import TABLES
from pipeline.storage.writer import PartWriter

# Per stream: vocabulary and per-frame pixel counts on a 10x10 frame.
DATA = {
    "cam-a": (["road", "car"], [[100, 0], [50, 50], [80, 20]]),
    "cam-b": (["sky", "tree", "person"], [[10, 90, 0], [30, 60, 10]]),
}


def write_dataset(out, make_areas, job_id="job-1"):
    for stream_id, (vocab, frames) in DATA.items():
        areas = [make_areas(stream_id, i, px) for i, px in enumerate(frames)]
        with PartWriter(out, "class_areas", stream_id, max_rows=4) as writer:
            writer.append(class_area_table(areas, vocab, job_id))
        with PartWriter(out, "vocabularies", stream_id) as writer:
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


def test_views_exist_before_any_data_with_the_right_columns(tmp_path):
    con = connect(tmp_path)
    for name, spec in TABLES.items():
        table = con.sql(f"SELECT * FROM {name}").to_arrow_table()
        assert table.num_rows == 0
        assert table.schema.names == spec.schema.names
        assert [f.type for f in table.schema] == [f.type for f in spec.schema]
    assert summary(tmp_path).num_rows == 0


def test_views_see_parts_published_after_connecting(tmp_path, make_areas):
    write_dataset(tmp_path, make_areas)
    con = connect(tmp_path)
    before = con.sql("SELECT count(*) FROM class_areas").fetchall()[0][0]
    with PartWriter(tmp_path, "class_areas", "cam-c") as writer:
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


def test_missing_output_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        connect(tmp_path / "nope")
