"""`sanstream weights convert` with bad input, as a user runs it: one line naming the file and what to do,
exit code 2, never a traceback. (A checkpoint that almost fits is covered in tests/pipeline/san/
test_checkpoint_errors.py: the CLI prints that error the same way.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def convert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "weights", "convert", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    for word in words:
        assert word in result.stderr, result.stderr


def test_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    source = tmp_path / "notes.pth"
    source.write_text("hello, these are notes\n")
    target = tmp_path / "out.safetensors"
    result = convert(str(source), str(target))
    assert_user_error(result, str(source), "neither a PyTorch checkpoint", "san_vit_b_16.pth")
    assert not target.exists()


def test_a_missing_file(tmp_path: Path) -> None:
    source = tmp_path / "san_vit_b_16.pth"
    result = convert(str(source), str(tmp_path / "out.safetensors"))
    assert_user_error(result, str(source), "does not exist", "give the path of a SAN checkpoint")
    assert "--weights" not in result.stderr  # convert has no such option


def test_a_target_that_is_not_safetensors(tmp_path: Path) -> None:
    result = convert(str(tmp_path / "any.pth"), str(tmp_path / "out.pth"))
    assert_user_error(result, "out.pth: the target must end in .safetensors")
