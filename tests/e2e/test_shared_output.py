"""Jobs that share an output folder, as a user re-running the same file gets them: the second job reuses
the stream id derived from the file name and the default output folder, and both jobs keep every row,
visible to `query`, `status` and `plot --job` (real Ray, Serve, Redis, Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from actors.job import run_job
from actors.stream_config import DecoderSettings
from pipeline.cli.main import build_parser
from pipeline.cli.main import main as cli
from pipeline.cli.run import spec_from_args


def shorthand_spec(video: Path, out: Path, job_id: str):
    """The spec `sanstream run VIDEO --vocab ... --out OUT` builds, on the tiny model."""
    command = ["run", str(video), "--vocab", "road,car", "--out", str(out), "--every", "3"]
    args = build_parser().parse_args(
        [*command, "--model", "san_tiny_test", "--weights", "random", "--job-id", job_id]
    )
    return spec_from_args(args)


def parts_of(out: Path, job_id: str) -> dict[str, float]:
    """Every file of one job under the table directories, with its modification time."""
    return {
        str(path.relative_to(out)): path.stat().st_mtime
        for table in ("class_areas", "frames", "vocabularies", "errors", "gaps")
        for path in (out / table / job_id).rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def two_jobs(local_ray: None, videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("shared")
    settings = DecoderSettings(max_in_flight=4, flush_frames=4, poll_s=0.2)
    first = run_job(
        shorthand_spec(videos["street"], out, "job-first"), settings=settings, show_progress=False
    )
    before = parts_of(out, "job-first")
    second = run_job(
        shorthand_spec(videos["street"], out, "job-second"), settings=settings, show_progress=False
    )
    return out, first, second, before


def test_both_jobs_keep_all_their_rows(two_jobs) -> None:
    out, first, second, before = two_jobs
    assert first.status == second.status == "completed"
    assert set(first.streams) == set(second.streams) == {"street"}  # the same stream id, reused
    counts = duckdb.sql(
        f"SELECT job_id, stream_id, count(*), count(DISTINCT frame_index) "
        f"FROM read_parquet('{out}/class_areas/**/*.parquet') GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert counts == [("job-first", "street", 20, 10), ("job-second", "street", 20, 10)]
    # the second job never touched a file of the first
    assert parts_of(out, "job-first") == before and before


def test_query_status_and_plot_see_both_jobs(two_jobs, capsys: pytest.CaptureFixture[str]) -> None:
    out, *_ = two_jobs
    assert (
        cli(
            [
                "query",
                str(out),
                "SELECT job_id, count(*) AS n FROM class_areas GROUP BY ALL ORDER BY 1",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [
        {"job_id": "job-first", "n": 20},
        {"job_id": "job-second", "n": 20},
    ]
    assert cli(["query", str(out), "SELECT count(*) AS n FROM frames", "--job", "job-first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 10}]

    assert cli(["status", "--out", str(out), "--json"]) == 0
    jobs = {job["job_id"]: job["status"] for job in json.loads(capsys.readouterr().out)}
    assert jobs == {"job-first": "completed", "job-second": "completed"}
    for job in ("job-first", "job-second"):
        assert cli(["status", job, "--out", str(out), "--json"]) == 0
        snapshot = json.loads(capsys.readouterr().out)
        assert snapshot["streams"]["street"]["written"] == 10

    assert cli(["plot", str(out), "--stream", "street", "--job", "job-first"]) == 0
    assert (out / "plots" / "job-first" / "street.png").stat().st_size > 0
    capsys.readouterr()
    assert cli(["plot", str(out), "--stream", "street"]) == 0  # the latest job by default, with a note
    printed = capsys.readouterr().out
    assert "plotting the latest, job-second" in printed and "job-first" in printed
    assert (out / "plots" / "job-second" / "street.png").is_file()
