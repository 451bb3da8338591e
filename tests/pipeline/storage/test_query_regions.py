"""`region_summary` and the views of the region_areas and events tables, over Parquet written by the real
`PartWriter`, with numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.storage.query import _SQL_TYPES, connect, region_summary, run_sql
from pipeline.storage.schema import EVENTS, REGION_AREAS, TABLES
from pipeline.storage.writer import PartWriter

# Per stream: vocabulary, then per region the pixels of each class per frame (frames at 2 per second).
# lane has 40 pixels, sidewalk 20: each frame's counts sum to the region's size.
REGIONS = {
    "cam-a": (
        ["road", "car"],
        {
            "lane": [[40, 0], [20, 20], [10, 30]],
            "sidewalk": [[20, 0], [20, 0], [15, 5]],
        },
    ),
}
# (frames, mean, max) per (stream, region, class), computed by hand from REGIONS.
EXPECTED = {
    ("cam-a", "lane", "road"): (3, (1.0 + 0.5 + 0.25) / 3, 1.0),
    ("cam-a", "lane", "car"): (3, (0.0 + 0.5 + 0.75) / 3, 0.75),
    ("cam-a", "sidewalk", "road"): (3, (1.0 + 1.0 + 0.75) / 3, 1.0),
    ("cam-a", "sidewalk", "car"): (3, (0.0 + 0.0 + 0.25) / 3, 0.25),
}


def region_area_table(job_id: str, stream_id: str, vocab: list[str], regions: dict) -> pa.Table:
    """Rows of schema REGION_AREAS: one per frame, region and class, zeros included."""
    rows = []
    for region, frames in regions.items():
        for frame_index, pixels in enumerate(frames):
            total = sum(pixels)
            for class_id, (name, px) in enumerate(zip(vocab, pixels, strict=True)):
                rows.append(
                    {
                        "job_id": job_id,
                        "stream_id": stream_id,
                        "frame_index": frame_index,
                        "pts_seconds": frame_index / 2.0,
                        "region": region,
                        "class_id": class_id,
                        "class_name": name,
                        "pixels": px,
                        "fraction": px / total,
                        "vocabulary_version": 1,
                    }
                )
    return pa.Table.from_pylist(rows, schema=REGION_AREAS)


def write_regions(out: Path, data: dict = REGIONS, job_id: str = "job-q") -> Path:
    """region_areas for every stream in `data`, via the production writer (no job store: published at once)."""
    out.mkdir(parents=True, exist_ok=True)
    for stream_id, (vocab, regions) in data.items():
        writer = PartWriter(out, "region_areas", job_id, stream_id, max_rows=5)  # several parts per stream
        writer.append(region_area_table(job_id, stream_id, vocab, regions))
        writer.close()
    return out


def test_region_summary_numbers_and_order(tmp_path: Path) -> None:
    write_regions(tmp_path)
    assert len(list((tmp_path / "region_areas" / "job-q" / "cam-a").glob("part-*.parquet"))) > 1
    result = region_summary(tmp_path)
    assert result.schema.names == [
        "job_id",
        "stream_id",
        "region",
        "class_id",
        "class_name",
        "frames",
        "mean_fraction",
        "max_fraction",
    ]
    rows = result.to_pylist()
    assert [(r["region"], r["class_name"]) for r in rows] == [
        ("lane", "road"),
        ("lane", "car"),
        ("sidewalk", "road"),
        ("sidewalk", "car"),
    ]
    for row in rows:
        frames, mean, peak = EXPECTED[(row["stream_id"], row["region"], row["class_name"])]
        assert row["job_id"] == "job-q" and row["frames"] == frames
        assert row["mean_fraction"] == pytest.approx(mean)
        assert row["max_fraction"] == pytest.approx(peak)
    # the classes of one region and frame sum to 1, so the means of one region do too
    for region in ("lane", "sidewalk"):
        assert sum(r["mean_fraction"] for r in rows if r["region"] == region) == pytest.approx(1.0)


def test_region_summary_per_job(tmp_path: Path) -> None:
    write_regions(tmp_path, job_id="job-1")
    write_regions(tmp_path, {"cam-a": (["water"], {"pier": [[7], [7]]})}, job_id="job-2")
    both = region_summary(tmp_path).to_pylist()
    assert [(r["job_id"], r["region"], r["class_name"], r["frames"]) for r in both] == [
        ("job-1", "lane", "road", 3),
        ("job-1", "lane", "car", 3),
        ("job-1", "sidewalk", "road", 3),
        ("job-1", "sidewalk", "car", 3),
        ("job-2", "pier", "water", 2),
    ]
    only = region_summary(tmp_path, job_id="job-2").to_pylist()
    assert [(r["region"], r["mean_fraction"], r["max_fraction"]) for r in only] == [("pier", 1.0, 1.0)]
    assert region_summary(tmp_path, job_id="job-none").num_rows == 0


def test_every_column_type_has_a_duckdb_type() -> None:
    for spec in TABLES.values():
        for field in spec.schema:
            assert field.type in _SQL_TYPES, f"{spec.name}.{field.name}: {field.type}"


def test_region_and_event_views_before_and_after_data(tmp_path: Path) -> None:
    con = connect(tmp_path)
    empty = {}
    for name in ("region_areas", "events"):
        relation = con.sql(f"SELECT * FROM {name}")
        assert relation.columns == TABLES[name].schema.names and relation.fetchall() == []
        empty[name] = [str(t) for t in relation.types]
    assert empty["region_areas"] == [
        "VARCHAR",
        "VARCHAR",
        "BIGINT",
        "DOUBLE",
        "VARCHAR",
        "INTEGER",
        "VARCHAR",
        "BIGINT",
        "DOUBLE",
        "INTEGER",
    ]
    assert region_summary(tmp_path).num_rows == 0
    con.close()

    write_regions(tmp_path)
    # An open event on the whole frame: region and end_pts are null.
    event = {
        "job_id": "job-q",
        "stream_id": "cam-a",
        "sequence": 0,
        "event_id": "cam-a-0",
        "rule": "busy",
        "region": None,
        "class_name": "car",
        "status": "ended",
        "start_pts": 0.5,
        "end_pts": None,
        "start_wall": 100.5,
        "end_wall": None,
        "peak": 0.75,
        "frame_index": 2,
        "pts_seconds": 1.0,
        "wall_time": 101.0,
    }
    with PartWriter(tmp_path, "events", "job-q", "cam-a") as writer:
        writer.append(pa.Table.from_pylist([event], schema=EVENTS))
    con = connect(tmp_path)
    try:
        for name in ("region_areas", "events"):
            assert [str(t) for t in con.sql(f"SELECT * FROM {name}").types] == empty[name]
        assert con.sql("SELECT region, end_pts, peak FROM events").fetchall() == [(None, None, 0.75)]
    finally:
        con.close()
    counts = run_sql(tmp_path, "SELECT region, count(*) AS n FROM region_areas GROUP BY 1 ORDER BY 1")
    assert counts.to_pylist() == [{"region": "lane", "n": 6}, {"region": "sidewalk", "n": 6}]
