"""`sanstream query` over Parquet written by the real `PartWriter`, with numbers worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.frames import FrameAreas
from pipeline.storage.rows import class_area_table, frame_rows, vocabulary_rows
from pipeline.storage.writer import PartWriter
from tests.pipeline.storage.test_query_regions import write_regions

JOB = "job-q"
# Per stream: vocabulary and per-frame pixel counts on a 10x10 frame, at 2 frames per second.
DATA = {
    "cam-a": (["road", "car"], [[100, 0], [50, 50], [80, 20]]),
    "cam-b": (["sky", "tree", "person"], [[10, 90, 0], [30, 60, 10]]),
}
# (frames, mean, max) per (stream, class), computed by hand from DATA.
EXPECTED = {
    ("cam-a", "road"): (3, "76.7%", "100.0%"),
    ("cam-a", "car"): (3, "23.3%", "50.0%"),
    ("cam-b", "sky"): (2, "20.0%", "30.0%"),
    ("cam-b", "tree"): (2, "75.0%", "90.0%"),
    ("cam-b", "person"): (2, "5.0%", "10.0%"),
}


def write_outputs(out: Path, data: dict = DATA, job_id: str = JOB, first_wall: float = 1000.0) -> Path:
    """class_areas, frames and vocabularies for every stream in `data`, via the production writer, in
    `OUT/<table>/<job_id>/<stream_id>/`; the first frame arrives at `first_wall` (Unix seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    for stream_id, (vocab, frames) in data.items():
        areas = [
            FrameAreas(stream_id, i, i / 2.0, 10, 10, np.asarray(px, dtype=np.int64), 0.01 * i)
            for i, px in enumerate(frames)
        ]
        with PartWriter(out, "class_areas", job_id, stream_id, max_rows=4) as writer:
            writer.append(class_area_table(areas, vocab, job_id))
        with PartWriter(out, "frames", job_id, stream_id) as writer:
            writer.append(frame_rows(areas, [first_wall + i for i in range(len(areas))], job_id))
        with PartWriter(out, "vocabularies", job_id, stream_id) as writer:
            writer.append(vocabulary_rows(job_id, stream_id, vocab))
    return out


def table_rows(text: str) -> list[list[str]]:
    """Body rows of a rich table as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_outputs(tmp_path / "out")


def test_summary_table_numbers(out: Path, capsys) -> None:
    code, text, err = run_cli(capsys, "query", out)
    assert code == 0, err
    rows = table_rows(text)
    got = {(r[0], r[1]): (int(r[2]), r[3], r[4]) for r in rows}
    assert got == EXPECTED
    assert [r[1] for r in rows] == ["road", "car", "sky", "tree", "person"]  # vocabulary order per stream


def test_summary_json_and_job_filter(out: Path, capsys) -> None:
    code, text, _ = run_cli(capsys, "query", out, "--json")
    assert code == 0
    rows = {(r["stream_id"], r["class_name"]): r for r in json.loads(text)}
    assert rows[("cam-a", "road")]["mean_fraction"] == pytest.approx((1.0 + 0.5 + 0.8) / 3)
    assert rows[("cam-b", "tree")]["max_fraction"] == pytest.approx(0.9)
    assert {r["frames"] for r in rows.values()} == {3, 2}
    write_outputs(out, {"cam-c": (["water"], [[40], [60]])}, job_id="job-other")
    code, text, _ = run_cli(capsys, "query", out)
    assert code == 0 and ["job-other", "cam-c", "water", "2", "50.0%", "60.0%"] in table_rows(text)
    code, text, _ = run_cli(capsys, "query", out, "--job", "job-other", "--json")
    assert [(r["stream_id"], r["mean_fraction"]) for r in json.loads(text)] == [("cam-c", pytest.approx(0.5))]
    code, text, _ = run_cli(capsys, "query", out, "--job", "job-none")
    assert code == 0 and "no class areas of job job-none" in text


def test_sql_result_as_table_csv_and_json(out: Path, capsys) -> None:
    sql = (
        "SELECT f.stream_id, count(*) AS frames, max(f.pts_seconds) AS last_pts, min(v.class_name) AS first_class "
        "FROM frames f JOIN vocabularies v ON v.stream_id = f.stream_id AND v.class_id = 0 "
        "GROUP BY f.stream_id ORDER BY f.stream_id"
    )
    code, text, err = run_cli(capsys, "query", out, sql)
    assert code == 0, err
    assert table_rows(text) == [["cam-a", "3", "1", "road"], ["cam-b", "2", "0.5", "sky"]]
    assert "2 rows" in text
    code, text, _ = run_cli(capsys, "query", out, sql, "--csv")
    assert list(csv.DictReader(io.StringIO(text))) == [
        {"stream_id": "cam-a", "frames": "3", "last_pts": "1.0", "first_class": "road"},
        {"stream_id": "cam-b", "frames": "2", "last_pts": "0.5", "first_class": "sky"},
    ]
    code, text, _ = run_cli(capsys, "query", out, sql, "--json")
    assert json.loads(text) == [
        {"stream_id": "cam-a", "frames": 3, "last_pts": 1.0, "first_class": "road"},
        {"stream_id": "cam-b", "frames": 2, "last_pts": 0.5, "first_class": "sky"},
    ]


def test_sql_with_a_job_reads_only_that_jobs_rows(out: Path, capsys) -> None:
    # Another job re-ran the same streams into the same output dir, with other numbers.
    write_outputs(out, {"cam-a": (["road", "car"], [[10, 90]] * 5)}, job_id="job-rerun", first_wall=5000.0)
    sql = (
        "SELECT job_id, stream_id, count(DISTINCT frame_index) AS frames, sum(pixels)::BIGINT AS px "
        "FROM class_areas GROUP BY ALL ORDER BY ALL"
    )
    code, text, err = run_cli(capsys, "query", out, sql, "--json")
    assert code == 0, err
    assert json.loads(text) == [
        {"job_id": "job-q", "stream_id": "cam-a", "frames": 3, "px": 300},
        {"job_id": "job-q", "stream_id": "cam-b", "frames": 2, "px": 200},
        {"job_id": "job-rerun", "stream_id": "cam-a", "frames": 5, "px": 500},
    ]
    code, text, err = run_cli(capsys, "query", out, sql, "--job", "job-rerun", "--json")
    assert code == 0, err
    assert json.loads(text) == [{"job_id": "job-rerun", "stream_id": "cam-a", "frames": 5, "px": 500}]
    # every view is restricted, joins included
    join = (
        "SELECT count(*) AS n, min(f.wall_time) AS first FROM frames f "
        "JOIN vocabularies v ON v.stream_id = f.stream_id AND v.class_id = 0"
    )
    code, text, _ = run_cli(capsys, "query", out, join, "--job", JOB, "--csv")
    assert code == 0 and text.splitlines() == ["n,first", "5,1000.0"]
    code, text, _ = run_cli(capsys, "query", out, join, "--job", "job-rerun", "--csv")
    assert code == 0 and text.splitlines() == ["n,first", "5,5000.0"]
    code, text, _ = run_cli(capsys, "query", out, sql, "--job", "job-none", "--csv")
    assert code == 0 and text.splitlines() == ["job_id,stream_id,frames,px"]
    code, text, err = run_cli(capsys, "query", out, sql, "--job", "../job-q")
    assert code == 2 and text == "" and "--job '../job-q'" in err


def test_long_results_are_cut_with_a_note(out: Path, capsys) -> None:
    code, text, _ = run_cli(capsys, "query", out, "SELECT range AS n FROM range(120)")
    assert code == 0
    assert [r[0] for r in table_rows(text)] == [str(i) for i in range(50)]
    assert "showing 50 of 120 rows" in text
    code, text, _ = run_cli(capsys, "query", out, "SELECT range AS n FROM range(120)", "--max-rows", "5")
    assert len(table_rows(text)) == 5 and "showing 5 of 120 rows" in text
    code, text, _ = run_cli(capsys, "query", out, "SELECT range AS n FROM range(120)", "--csv")
    assert text.splitlines() == ["n", *map(str, range(120))]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT * FROM nope", "Table with name nope does not exist"),
        ("SELECT no_such_column FROM frames", 'Referenced column "no_such_column" not found'),
    ],
)
def test_bad_sql_is_one_line_with_duckdbs_message(out: Path, capsys, sql: str, message: str) -> None:
    code, text, err = run_cli(capsys, "query", out, sql)
    assert code == 2 and text == ""
    assert err.startswith("sanstream query: query failed: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_output_dir(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "query", tmp_path / "nope")
    assert code == 2 and f"output directory {tmp_path / 'nope'} does not exist" in err


def test_empty_output_dir_has_empty_views(tmp_path: Path, capsys) -> None:
    code, text, _ = run_cli(capsys, "query", tmp_path)
    assert code == 0 and "no class areas in" in text
    code, text, _ = run_cli(capsys, "query", tmp_path, "SELECT count(*) AS n FROM gaps", "--json")
    assert json.loads(text) == [{"n": 0}]


def test_query_in_a_real_process(out: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "query",
            str(out),
            "SELECT sum(pixels) AS px FROM class_areas",
            "--csv",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["px", str(3 * 100 + 2 * 100)]


# Per region of cam-a, (frames, mean, max) per class, computed by hand from
# tests.pipeline.storage.test_query_regions.REGIONS (lane: 40 pixels, sidewalk: 20).
EXPECTED_REGIONS = [
    ["cam-a", "lane", "road", "3", "58.3%", "100.0%"],  # (40 + 20 + 10) / 40 / 3
    ["cam-a", "lane", "car", "3", "41.7%", "75.0%"],  # (0 + 20 + 30) / 40 / 3
    ["cam-a", "sidewalk", "road", "3", "91.7%", "100.0%"],  # (20 + 20 + 15) / 20 / 3
    ["cam-a", "sidewalk", "car", "3", "8.3%", "25.0%"],  # (0 + 0 + 5) / 20 / 3
]
REGION_HEADING = "per region: share of the region per class over time"


def test_summary_prints_a_region_table_when_regions_exist(out: Path, capsys) -> None:
    write_regions(out)
    code, text, err = run_cli(capsys, "query", out)
    assert code == 0, err
    frame_part, region_part = text.split(REGION_HEADING)
    assert frame_part.startswith(f"share of the frame per class over time, {out}:")
    rows = table_rows(frame_part)  # the per-class table is unchanged
    assert {(r[0], r[1]): (int(r[2]), r[3], r[4]) for r in rows} == EXPECTED
    assert region_part.startswith(f", {out}:")
    assert table_rows(region_part) == EXPECTED_REGIONS
    assert "region" in region_part.splitlines()[2]  # the header names the region column


def test_without_regions_the_summary_looks_as_before(out: Path, capsys) -> None:
    code, before, _ = run_cli(capsys, "query", out)
    assert code == 0 and REGION_HEADING not in before
    assert before.startswith(f"share of the frame per class over time, {out}:")
    assert len(table_rows(before)) == len(EXPECTED) and "region" not in before.splitlines()[2]
    # regions of another job only: --job on this one prints exactly what it printed before
    write_regions(out, job_id="job-other")
    code, text, _ = run_cli(capsys, "query", out, "--job", JOB)
    assert code == 0 and text == before
    code, text, _ = run_cli(capsys, "query", out, "--job", "job-other")
    assert code == 0 and "no class areas of job job-other" in text
    assert table_rows(text.split(REGION_HEADING)[1]) == EXPECTED_REGIONS


def test_regions_flag_prints_only_the_region_summary(out: Path, capsys) -> None:
    write_regions(out)
    code, text, err = run_cli(capsys, "query", out, "--regions")
    assert code == 0, err
    assert "share of the frame" not in text and text.startswith(REGION_HEADING)
    assert table_rows(text) == EXPECTED_REGIONS
    code, text, _ = run_cli(capsys, "query", out, "--regions", "--json")
    rows = json.loads(text)
    assert [(r["region"], r["class_name"], r["frames"]) for r in rows] == [
        ("lane", "road", 3),
        ("lane", "car", 3),
        ("sidewalk", "road", 3),
        ("sidewalk", "car", 3),
    ]
    assert [r["mean_fraction"] for r in rows] == pytest.approx([70 / 120, 50 / 120, 55 / 60, 5 / 60])
    assert [r["max_fraction"] for r in rows] == pytest.approx([1.0, 0.75, 1.0, 0.25])
    code, text, _ = run_cli(capsys, "query", out, "--regions", "--csv")
    lines = text.splitlines()
    assert lines[0] == "job_id,stream_id,region,class_id,class_name,frames,mean_fraction,max_fraction"
    assert [line.split(",")[:6] for line in lines[1:]] == [
        [JOB, *row[:2], str(cid), *row[2:4]] for row, cid in zip(EXPECTED_REGIONS, (0, 1, 0, 1), strict=True)
    ]
    # the default --json/--csv output stays the per-class summary
    code, text, _ = run_cli(capsys, "query", out, "--json")
    assert "region" not in json.loads(text)[0] and len(json.loads(text)) == len(EXPECTED)


def test_regions_flag_without_regions_or_with_sql(out: Path, capsys) -> None:
    code, text, _ = run_cli(capsys, "query", out, "--regions")
    assert code == 0 and f"no region areas in {out} yet" in text
    code, text, _ = run_cli(capsys, "query", out, "--regions", "--json")
    assert code == 0 and json.loads(text) == []
    code, text, _ = run_cli(capsys, "query", out, "--regions", "--job", "job-none")
    assert code == 0 and "no region areas of job job-none" in text
    code, text, err = run_cli(capsys, "query", out, "SELECT 1", "--regions")
    assert code == 2 and text == "" and "--regions" in err and "takes no SQL" in err
    assert len(err.strip().splitlines()) == 1


def test_region_tables_fit_80_columns_over_several_jobs(out: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    jobs = [f"job-20261202-1616{i:02d}-a4986{i}" for i in range(2)]
    long_region = "north-gate-entrance-lane-with-a-long-name"
    vocab = ["road", "vegetation, shrubs and grass"]
    for job in jobs:
        write_outputs(out, {"camera-north-gate": (["road"], [[100], [100]])}, job_id=job)
        write_regions(out, {"camera-north-gate": (vocab, {long_region: [[3, 1], [1, 1]]})}, job_id=job)
    code, text, err = run_cli(capsys, "query", out)
    assert code == 0, err
    lines = text.split(REGION_HEADING)[1].splitlines()[1:]  # below the heading (which names OUT)
    assert lines and all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    # one table per job, titled with the whole job id (copied into --job: never folded)
    assert [line.strip() for line in lines if line.strip().startswith("job ")] == [f"job {j}" for j in jobs]
    rows = table_rows("\n".join(lines))
    assert sum("62.5%" in r and "75.0%" in r for r in rows) == 2  # road: (3/4 + 1/2) / 2
    assert sum("37.5%" in r and "50.0%" in r for r in rows) == 2  # vegetation: (1/4 + 1/2) / 2
    # folded, never cut: the first row's stream, region and class read whole from their pieces
    first = rows[: next(i for i, r in enumerate(rows[1:], 1) if r[3])]  # up to the second class row
    assert ["".join(r[col] for r in first) for col in (0, 1)] == ["camera-north-gate", long_region]
    assert " ".join(r[2] for r in rows[len(first) :] if r[2]).startswith("vegetation, shrubs and grass")
    assert "…" not in text
