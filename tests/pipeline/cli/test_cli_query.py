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
