"""What the CLI prints fits an 80-column terminal without cutting what one copies (job ids, paths), uses
one percentage format, and carries colour codes only to a terminal."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from pipeline.cli import query, segment, status
from pipeline.cli.console import make_console
from pipeline.cli.formats import percent

WIDTH = 80
JOB_IDS = [f"job-20261202-1616{i:02d}-a4986{i}" for i in range(3)]


def render(*renderables: object, width: int = WIDTH) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue().splitlines()


def assert_fits(lines: list[str]) -> None:
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, too_wide


def test_percent_has_one_decimal() -> None:
    assert [percent(x) for x in (0.0, 0.7667, 0.05, 1.0)] == ["0.0%", "76.7%", "5.0%", "100.0%"]


def test_job_list_keeps_every_job_id_whole_on_one_line() -> None:
    now = time.time()
    jobs = [
        {"job_id": job, "status": state, "created": now, "updated": now}
        for job, state in zip(JOB_IDS, ["completed", "interrupted", "reconnecting"], strict=True)
    ]
    lines = render(status.job_table(jobs))
    assert_fits(lines)
    for job in JOB_IDS:
        assert sum(job in line for line in lines) == 1, job


def test_stream_table_folds_a_long_stream_id_and_keeps_the_counts() -> None:
    long_id = "camera-north-gate-entrance-lane-01"
    snapshot = {
        "streams": {
            long_id: {
                "status": "reconnecting",
                "decoded": 123456,
                "analysed": 123456,
                "written": 120000,
                "last_written_frame": 119999,
                "error_count": 3,
            }
        }
    }
    lines = render(status.stream_table(snapshot))
    assert_fits(lines)
    text = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert text == long_id  # folded over several lines, not a character lost
    assert any("123,456" in line and "119999" in line for line in lines)


def test_query_summary_over_several_jobs_keeps_job_ids_whole() -> None:
    rows = [
        {
            "job_id": job,
            "stream_id": "drone-survey-north",
            "class_name": name,
            "frames": 1200,
            "mean_fraction": mean,
            "max_fraction": 1.0,
        }
        for job in JOB_IDS[:2]
        for name, mean in (("water", 0.76667), ("vegetation, shrubs and grass", 0.05))
    ]
    lines = render(query.summary_table(pa.Table.from_pylist(rows)))
    assert_fits(lines)
    for job in JOB_IDS[:2]:
        assert sum(job in line for line in lines) == 2  # one row per class
    assert any("76.7%" in line and "100.0%" in line for line in lines)


def test_query_results_fold_values_instead_of_cutting_them() -> None:
    path = "/data/surveys/2026/north/" + "x" * 90 + ".mp4"
    lines = render(query.result_table(pa.table({"source": [path], "n": [3]}), None, 10))
    assert_fits(lines)
    assert "…" not in "".join(lines)
    cells = "".join(line.split("│")[1].strip() for line in lines[3:] if line.startswith("│"))
    assert cells == path


def test_segment_prints_both_paths_whole_and_percentages_with_one_decimal(tmp_path: Path) -> None:
    image = tmp_path / "a-long-folder-name-for-the-survey-images" / "street-corner-2026-12-02.png"
    overlay = tmp_path / "sanstream-out" / "street-corner-2026-12-02_san.png"
    console = Console(width=WIDTH, file=io.StringIO(), color_system=None)
    segment.print_result(console, image, overlay, ("road", "car"), np.array([300, 100]))
    lines = console.file.getvalue().splitlines()
    assert lines[0] == f"{image} -> {overlay}" and len(lines[0]) > WIDTH  # longer than 80, not broken
    assert_fits(lines[1:])
    assert any("75.0%" in line for line in lines) and any("25.0%" in line for line in lines)


def test_suggested_commands_are_not_wrapped() -> None:
    """`soft_wrap=True`, as run/status print their `sanstream resume ...` lines, keeps a command whole."""
    command = f"sanstream resume {JOB_IDS[0]} --out /srv/sanstream/outputs/drone-survey-north/2026-12-02"
    console = Console(width=WIDTH, file=io.StringIO(), color_system=None)
    console.print(f"resume with: {command}", soft_wrap=True)
    assert console.file.getvalue() == f"resume with: {command}\n"


def test_no_colour_codes_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    console = make_console()
    console.print("[red]failed[/red] [bold]job[/bold]")
    assert pipe.getvalue() == "failed job\n"
    assert not console.is_terminal and console.color_system is None


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    leader, follower = os.openpty()
    with open(follower, "w", closefd=True) as terminal:
        monkeypatch.setattr("sys.stdout", terminal)
        assert make_console().color_system is not None
        monkeypatch.setenv("NO_COLOR", "1")
        assert make_console().color_system is None
    os.close(leader)


def test_force_color_still_colours_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    make_console().print("[red]failed[/red]")
    assert "\x1b[" in pipe.getvalue()
