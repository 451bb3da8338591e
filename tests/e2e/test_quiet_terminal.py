"""What a new user sees: `sanstream run` into a pipe at 80 columns prints our own lines only (no Ray or
Serve log lines, no colour codes), each within 80 columns, and `sanstream status` then shows the job id
whole. One real driver (a local Ray, the Serve pool, a decoder and a writer), run as the user runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sample_video import write_sample_video
from tests.conftest import _stop_redis_servers

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 80
#: Pieces of Ray's and Serve's own log lines, as they reached the terminal before.
RAY_NOISE = (
    "INFO",
    "WARNING",
    "core_worker",
    "Connecting to existing Serve",
    "(ServeReplica",
    "(ServeController",
    "(DecoderHost",
    "pid=",
    "raylet",
    "Token authentication",
)
JOB_ENDED = re.compile(r"^job (job-[0-9a-z-]+) completed in [0-9.]+ s; output in (\S+)/$", re.MULTILINE)


@pytest.fixture
def short_out() -> Iterator[Path]:
    """An output folder with a short absolute path (15 characters), so the lines that name it fit in 80
    columns: the suggested commands are never wrapped. pytest's own tmp_path alone is over 50 characters."""
    root = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))
    try:
        yield root
    finally:
        _stop_redis_servers(root)
        shutil.rmtree(root, ignore_errors=True)


def sanstream(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process with stdout and stderr pipes, at 80 columns, with a terminal type that
    would allow colour: only the missing terminal may keep colour codes out."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS", "FORCE_COLOR")}
    env |= {"COLUMNS": str(WIDTH), "TERM": "xterm-256color"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def check_quiet(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Exit 0, no ANSI codes, none of Ray's lines, every line within 80 columns; returns stdout's lines."""
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, shown
    for stream in (result.stdout, result.stderr):
        assert "\x1b[" not in stream, shown
        noisy = [line for line in stream.splitlines() if any(piece in line for piece in RAY_NOISE)]
        assert not noisy, shown
        too_wide = [line for line in stream.splitlines() if len(line) > WIDTH]
        assert not too_wide, shown
    return result.stdout.splitlines()


@pytest.mark.slow  # terminal output of a whole job at 80 columns (75 s)
def test_run_and_status_print_only_our_own_lines_at_80_columns(tmp_path: Path, short_out: Path) -> None:
    clip = write_sample_video(tmp_path / "clip.mp4", seconds=2, fps=8, size=(96, 128))
    ran = sanstream(
        "run",
        str(clip),
        "--vocab",
        "sky,road",
        "--model",
        "san_tiny_test",
        "--weights",
        "random",
        "--out",
        str(short_out),
        "--no-progress",
    )
    lines = check_quiet(ran)
    assert ran.stderr == ""  # Ray's token-auth warning and Serve's INFO lines used to come here
    ended = JOB_ENDED.findall(ran.stdout)
    assert len(ended) == 1, ran.stdout
    job_id, out = ended[0]
    assert Path(out) == short_out.resolve()
    # The commands to copy are on lines of their own, whole.
    assert f"  sanstream status {job_id} --out {out}" in lines
    assert f"  sanstream query {out}" in lines
    assert any(row.startswith("│ clip ") and "%" in row for row in lines)  # the summary table

    listed = sanstream("status", "--out", str(short_out))
    rows = check_quiet(listed)
    assert any(job_id in row and "completed" in row for row in rows), listed.stdout
